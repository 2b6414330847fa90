"""Handlers the tests serve."""

import os
import re
import time

import gaspar2


def echo(message):
    return message


def fail(message):
    raise ValueError("handler refuses %d bytes" % len(message))


def work(message):
    """A handler steered by its message, so one server can show many behaviours.

    ``pid`` / ``pid:SECONDS``: sleep, then reply with this worker's pid.
    ``mark:PATH:SECONDS``: write the pid to PATH (the test sees the request running),
    sleep, reply with the pid. ``count:PATH:TEXT``: append a line to PATH (one per run),
    reply TEXT. ``big:N``: reply N bytes. ``late:PATH:N``: write the pid to PATH, wait
    until PATH is gone (at most 300 s), then reply N bytes. ``exit``: die at once. ``fail``:
    raise. ``bad``: return an int. ``env:NAME``: the worker's environment variable NAME, or
    ``-``. Anything else is echoed.
    """
    command, _, arg = message.partition(b":")
    if command == b"env":
        return os.environ.get(arg.decode(), "-")
    if command == b"pid":
        time.sleep(float(arg or 0))
        return str(os.getpid())
    if command == b"mark":
        path, _, seconds = arg.rpartition(b":")
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(seconds))
        return str(os.getpid())
    if command == b"count":
        path, _, text = arg.partition(b":")
        with open(path, "a") as f:
            f.write("%d\n" % os.getpid())
        return text
    if command == b"big":
        return b"x" * int(arg)
    if command == b"late":
        path, _, size = arg.rpartition(b":")
        gate(b"gate:" + path)
        return b"x" * int(size)
    if command == b"hold":          # hold:PATH:SECONDS:PADDING, for a large request
        path, seconds, _ = arg.split(b":", 2)
        return work(b"mark:%s:%s" % (path, seconds))
    if command == b"exit":
        os._exit(7)
    if command == b"sysexit":
        raise SystemExit(2)           # as argparse does on bad input
    if command == b"interrupt":
        raise KeyboardInterrupt
    if command == b"fail":
        raise RuntimeError("asked to fail")
    if command == b"bad":
        return 42
    return message


class Upper(gaspar2.Consumer):
    """A Consumer subclass with per-process state from setup()."""

    def setup(self):
        self.prefix = "%d:" % os.getpid()

    def handle(self, message):
        return self.prefix + message.decode("utf-8").upper()


upper = Upper()


class BrokenSetup(gaspar2.Consumer):
    def setup(self):
        raise RuntimeError("cannot open the model file")

    def handle(self, message):
        return message


class Reverse(gaspar2.Consumer):
    """Takes a memoryview: replies with the body reversed, twice over after ``twice:``."""

    accepts_memoryview = True

    def handle(self, message):
        assert isinstance(message, memoryview), type(message)
        data = bytes(message)[::-1]
        return data * 2 if message[:6] == b"twice:" else data


class SlowStart(gaspar2.Consumer):
    """setup() takes $GASPAR2_SETUP_SECONDS (0.5 by default); handle() is ``work``."""

    def setup(self):
        time.sleep(float(os.environ.get("GASPAR2_SETUP_SECONDS", "0.5")))

    def handle(self, message):
        return work(message)


class SlowSetup(gaspar2.Consumer):
    """Each worker takes a while to start, the last one longest."""

    def setup(self):
        time.sleep(0.3 + (os.getpid() % 3) * 0.3)

    def handle(self, message):
        time.sleep(float(message or 0))
        return str(os.getpid())


def fair(message):
    """``KIND:ARG:TAG`` runs one slow request of KIND; ``quick:TAG`` returns at once.

    Every call first appends its TAG to the file named by $GASPAR2_CALLS, so a test can
    count how often each request ran. KIND is ``sleep`` (time.sleep ARG s), ``loop`` (a
    Python loop for ARG s), ``regex`` (one backtracking re.match on ARG letters: a single C
    call that holds the GIL) or ``gevent`` (gevent.sleep ARG s).
    """
    kind, _, rest = message.partition(b":")
    arg, _, tag = rest.rpartition(b":")
    with open(os.environ["GASPAR2_CALLS"], "ab") as calls:
        calls.write(tag + b"\n")
    if kind == b"sleep":
        time.sleep(float(arg))
    elif kind == b"loop":
        end = time.monotonic() + float(arg)
        while time.monotonic() < end:
            pass
    elif kind == b"regex":
        re.match(rb"(a+)+$", b"a" * int(arg) + b"b")
    elif kind == b"gevent":
        import gevent
        gevent.sleep(float(arg))
    return tag


class GatedSetup(gaspar2.Consumer):
    """setup() waits until the file named by $GATE exists: the test decides when workers
    become ready."""

    def setup(self):
        while not os.path.exists(os.environ["GATE"]):
            time.sleep(0.01)

    def handle(self, message):
        return message


def log_line(message):
    """Log the message from the worker, then echo it."""
    import logging
    logging.getLogger("tests.handler").warning("handler says %s", message.decode())
    return message


def gate(message):
    """``gate:PATH``: write this worker's pid to PATH, wait until PATH is gone (at most
    300 s), then reply the pid: it keeps one worker busy for as long as a test wants.
    Anything else is echoed."""
    command, _, path = message.partition(b":")
    if command != b"gate":
        return message
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 300
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(os.getpid())


def hang(message):
    """Handlers that never return. ``regex:PATH``: write this worker's pid to PATH, then run
    one backtracking re.match that takes longer than any test (a single C call that holds
    the GIL). ``loop:PATH``: write the pid to PATH, then loop in pure Python until PATH is
    gone; reply the pid. Anything else is echoed."""
    command, _, path = message.partition(b":")
    if command == b"regex":
        return spin_in_regex(path)
    if command == b"loop":
        return spin_in_python(path)
    return message


def spin_in_regex(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    re.match(rb"(a+)+$", b"a" * 64 + b"b")      # 2**64 steps
    return b"never"


def spin_in_python(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    turns = 0
    while True:
        turns += 1
        if turns % 100_000 == 0 and not os.path.exists(path):
            return str(os.getpid())


def scratch(message):
    """Work that needs a few MiB of scratch memory per request, as a decoded image does:
    two 3 MiB buffers, touched and freed. Under glibc's default, moving thresholds this
    maps or trims and faults in every page of them on every request. Replies the request's
    length and its first 32 bytes."""
    first, second = bytearray(3 << 20), bytearray(3 << 20)
    first[::4096] = second[::4096] = b"x" * len(first[::4096])
    del first, second
    return b"%d:" % len(message) + bytes(message[:32])


def noarg():
    """A mistake ``gaspar2 check`` and ``serve`` refuse: a handler that takes no request."""
    return b"never"


def returns_int(message):
    """A mistake only a request shows: the reply is not bytes."""
    return len(message)


def slow_upload(message):
    """A large message (1 MiB or more) sleeps 0.1 s and is answered with its length and its
    first byte; anything smaller is echoed."""
    if len(message) < 2**20:
        return message
    time.sleep(0.1)
    return b"%d:%s" % (len(message), bytes(message[:1]))


def upload_or_echo(message):
    """``U`` and a body: an upload to a slow handler, which sleeps 0.1 s and answers the
    message's length and last byte. Anything else is echoed."""
    if message[:1] != b"U":
        return message
    time.sleep(0.1)
    return b"%d:%d" % (len(message), message[-1])


def forge_on_the_sink(message):
    """``forge``: before answering, send the producer, on this worker's own reply socket,
    what no honest worker sends: REPLYs with a wrong token or naming a remote worker's id,
    for the request ids around, a REPLY in two frames, heads cut short and random bytes;
    then answer ``forged``. Anything else is echoed."""
    if message != b"forge":
        return message
    import gc
    import random

    from gaspar2.protocol import wire
    from gaspar2.workers.worker import Worker

    worker = next(o for o in gc.get_objects() if isinstance(o, Worker))
    rng = random.Random(7)
    for request_id in range(1, 200):
        worker.push.send(wire.encode_head(wire.REPLY, worker.id, worker.token ^ 1, request_id)
                         + b"forged by token")
        worker.push.send(wire.encode_head(wire.REPLY, wire.REMOTE_ID_MIN + worker.id,
                                          worker.token, request_id) + b"forged by id")
    worker.push.send_multipart([wire.encode_head(wire.REPLY, worker.id, worker.token ^ 1, 1),
                                b"two frames"])
    for size in range(1, wire.HEADS[wire.REPLY].size):
        worker.push.send(wire.encode_head(wire.REPLY, worker.id, worker.token, 1)[:size])
    for _ in range(100):
        worker.push.send(rng.randbytes(rng.randint(0, 40)))
    return b"forged"
