"""Every request size that matters, in every way a producer runs.

The sizes are not samples: each threshold the code has is hit at one byte below, exactly
and one byte above, with a size between each pair of thresholds, from an empty request to
``max_message_size`` (and one byte past it, which is refused with a reset). A band of sizes
that only fails in one way of running, or only with several requests in flight, cannot hide
between two sampled sizes.

Each way of running is one parametrized, module-scoped server, which takes every size
alone, the whole sweep at once, the sweep in shuffled groups of eight, and one byte past
the limit:

``serve-echo``            ``gaspar2 serve gaspar2.examples:echo``, the command line.
``embedded-reverse``      tests/sizes_app.py: a plain gevent program that embeds a Producer,
                          with a handler that reverses the body (a memoryview handler).
``patched-echo``          the same program after gevent.monkey.patch_all(), echoing.
``patched-reverse``       the same, reversing: an echo of the wrong buffer is caught too.
``wsgi-patched-reverse``  the same program, monkey-patched, also serving a gevent.pywsgi
                          app whose POST endpoint hands its body to the embedded producer
                          with gaspar2.client.request; the test speaks HTTP to it.
``*-zeromq``              ``serve-echo`` and ``patched-reverse`` with ``--shm-threshold 0``:
                          every body travels through ZeroMQ, whatever its size.
``unix-file-echo``        ``gaspar2 serve --bind unix:PATH``: every body goes over the unix
                          socket, sent by client.request_file from a file, in the pieces
                          ``gaspar2 request`` streams (a unix listener also holds back a
                          frame's last byte: see listeners.py).
``remote-echo``           ``gaspar2 serve --remote-workers`` on 127.0.0.1 with one local
                          worker and a ``gaspar2 worker`` group of two, all serving
                          tests.handlers:gate (an echo). The local worker is
                          kept busy by a request that waits on a file for the whole module,
                          so the sweep is served by the remote workers; the access log's
                          worker= field shows that it is.

What a process does only once, at its first large message, would hit only whichever size
came first there; so a fresh producer of each mode also takes the whole sweep at once as
its first traffic, and a fresh monkey-patched embedded producer with one worker and no
shared memory is started for each size, which is its first request (with a small one sent
behind it).

Every request carries a body of its own (its size, index and round in a head, then bytes
from a generator seeded with that head), and every reply is compared byte for byte with
what that very request should get back; a wrong reply says where it differs and whether it
is the reply meant for another request of the same round, or a request's own body.
"""

import concurrent.futures
import hashlib
import http.client
import itertools
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile

import pytest
import zmq

from gaspar2 import client, settings
from gaspar2.frontend import frames
from gaspar2.protocol import arena, wire

from conftest import ROOT, Server, alive, children, environment, exchange, wait_for

pytestmark = pytest.mark.timeout(180)

MiB = 1 << 20
# Small enough to keep the file quick, large enough that every threshold below fits under
# it with room to spare. frames.GROWTH_MAX (16 MiB, the most a read buffer grows at once)
# lies beyond it and is NOT covered here: it only matters for frames over 16 MiB, which
# need a max_message_size above it and would make every round slow.
MAX_MESSAGE_SIZE = 2 * MiB
REQUEST_TIMEOUT = 10.0          # per request: a few ms are expected, even loaded
GRACE = "5"                     # --graceful-timeout: a hung request must not stall teardown
HEARTBEAT = "1.0"               # remote workers: the default, lenient on a loaded machine

HEADER = wire.HEADER.size
FIRST_CAPACITY = frames.FIRST_CAPACITY
# The first read of every frame goes into this buffer (length prefix included).
SCRATCH = len(frames._SCRATCH)
GRAIN = arena.GRAIN
# pyzmq's zero-copy threshold: batches this large once went as zero-copy frames, which start
# a thread at their first send (now every send copies; the size stays worth sweeping).
ZERO_COPY_MIN = zmq.COPY_THRESHOLD
SHM_THRESHOLD = settings.DEFAULTS["shm_threshold"]
READ_SLICE = frames.READ_SLICE
REMOTE_ID_MIN = wire.REMOTE_ID_MIN

THRESHOLDS = sorted({
    HEADER,                     # a payload as long as its length prefix
    FIRST_CAPACITY,             # a read buffer's least size and least growth
    SCRATCH - HEADER,           # the whole frame just fits the first read
    SCRATCH,                    # the body alone fills the first read
    GRAIN,                      # one arena grain
    ZERO_COPY_MIN,              # pyzmq's zero-copy threshold
    2 * GRAIN,                  # a region of two grains (inside the 64-256 KiB band)
    SHM_THRESHOLD,              # bodies this large go through the shared arena
    SHM_THRESHOLD + GRAIN,      # an arena region one grain larger than the least
    4 * GRAIN,                  # shm_threshold's old default: the top of a band that failed
    READ_SLICE,                 # payload bytes read per wake-up
    MAX_MESSAGE_SIZE,           # the limit; one byte more is refused
})
assert THRESHOLDS[-1] == MAX_MESSAGE_SIZE < frames.GROWTH_MAX


def sweep():
    sizes = {0, 1}
    for threshold in THRESHOLDS:
        sizes.update(n for n in (threshold - 1, threshold, threshold + 1)
                     if 0 <= n <= MAX_MESSAGE_SIZE)
    for low, high in itertools.pairwise([0, *THRESHOLDS]):
        if high - low > 2:
            sizes.add((low + high) // 2)
    sizes.update((100_000, 200_000))    # where the monkey-patched producer once failed
    return sorted(sizes)


SIZES = sweep()


# -- bodies and verdicts --------------------------------------------------------------------

def make_body(size, index, salt):
    """``size`` bytes no other request has: a head naming it, then seeded random bytes.
    The head starts with ``#``, which none of the handlers' commands do."""
    head = b"#%s:%d:%d#" % (salt.encode(), index, size)
    return (head + random.Random(head).randbytes(size))[:size]


def digest(data):
    return hashlib.sha256(data).digest()


def first_difference(a, b):
    n, at = min(len(a), len(b)), 0
    while at < n and a[at:at + 4096] == b[at:at + 4096]:
        at += 4096
    while at < n and a[at] == b[at]:
        at += 1
    return at


def verdict(reply, expected, meant, bodies):
    """"ok", or what is wrong with ``reply``. ``meant`` maps the digest of each expected
    reply in the round to its request's size; ``bodies`` does the same for the requests."""
    if reply == expected:
        return "ok"
    text = "wrong reply: %d bytes (expected %d), first difference at byte %d, starts %s" % (
        len(reply), len(expected), first_difference(reply, expected), reply[:24].hex())
    key = digest(reply)
    if key in meant:
        text += "; it is the reply to the %d-byte request" % meant[key]
    elif key in bodies:
        text += "; it is the %d-byte request's own body" % bodies[key]
    return text


class HTTPStatus(Exception):
    pass


# -- the ways a producer runs ---------------------------------------------------------------

class Target:
    """A serving producer, whatever runs it: ``request`` sends one body, ``round`` a list
    of sizes at once."""

    def __init__(self, name, server, reverse, holder=None):
        self.name = name
        self.server = server            # a conftest.Server: its log and its producer's port
        self.reverse = reverse
        self.group = None
        self.access_log = None
        self.http = None
        self.holder = holder

    def reply_for(self, body):
        return body[::-1] if self.reverse else body

    def request(self, body):
        return client.request(self.server.url, body, timeout=REQUEST_TIMEOUT)

    def outcome(self, body, meant, bodies):
        try:
            reply = self.request(body)
        except client.RequestReset:
            return "reset"
        except client.RequestTimeout:
            return "timeout after %.0f s" % REQUEST_TIMEOUT
        except (OSError, http.client.HTTPException, HTTPStatus) as exc:
            return "failed: %s: %s" % (type(exc).__name__, exc)
        return verdict(reply, self.reply_for(body), meant, bodies)

    def round(self, sizes, salt):
        """Send a body of each size at once, each from its own thread; [(size, outcome)]."""
        bodies = [make_body(size, index, salt) for index, size in enumerate(sizes)]
        meant = {digest(self.reply_for(body)): len(body) for body in bodies}
        own = {digest(body): len(body) for body in bodies}
        logged = self.access_lines() if self.access_log else None
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            outcomes = list(pool.map(lambda body: self.outcome(body, meant, own), bodies))
        results = list(zip(sizes, outcomes, strict=True))
        assert_all_ok(self, results)
        if self.access_log:
            self.assert_served_remotely(sizes, len(logged))
        return results

    # The remote mode's access log: "... ok in=SIZE out=SIZE 1.2ms worker=ID".
    def access_lines(self):
        if not os.path.exists(self.access_log):
            return []
        with open(self.access_log, encoding="utf-8", errors="replace") as f:
            return [line for line in f.read().splitlines() if " worker=" in line]

    def assert_served_remotely(self, sizes, before):
        pattern = re.compile(r" ok in=(\d+) out=\d+ .* worker=(\S+)$")

        def served():
            found = [pattern.search(line) for line in self.access_lines()[before:]]
            found = [(int(m.group(1)), m.group(2)) for m in found if m]
            return found if len(found) >= len(sizes) else None
        found = wait_for(served, 30, message="an access line for each of %d requests" % len(sizes))
        assert sorted(size for size, _ in found) == sorted(sizes)
        local = [(size, worker) for size, worker in found
                 if not worker.isdigit() or int(worker) < REMOTE_ID_MIN]
        assert not local, "served by a local worker, not a remote one: %s" % local


class UnixFileTarget(Target):
    """Bodies go from a file over the unix socket, streamed as ``gaspar2 request -f``."""

    def request(self, body):
        with tempfile.TemporaryFile() as file:
            file.write(body)
            file.seek(0)
            return client.request_file(self.url, file, timeout=REQUEST_TIMEOUT)


class WSGITarget(Target):
    """Bodies go as HTTP POSTs to the gevent.pywsgi app, which asks its producer."""

    def request(self, body):
        host, port = self.http
        conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT + 10)
        try:
            conn.request("POST", "/", body=body,
                         headers={"Content-Type": "application/octet-stream"})
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        if response.status == 200:
            return data
        if response.status == 502:
            raise client.RequestReset("the app's request was reset (HTTP 502)")
        if response.status == 504 and b"no reply within" in data:
            raise client.RequestTimeout("the app's request timed out (HTTP 504)")
        raise HTTPStatus("HTTP %d: %s" % (response.status, data[:200].decode("utf-8", "replace")))


def assert_all_ok(target, results):
    failed = ["%d bytes: %s" % (size, outcome) for size, outcome in results if outcome != "ok"]
    assert not failed, "%s: %d of %d requests failed:\n  %s" % (
        target.name, len(failed), len(results), "\n  ".join(failed))


ECHO, REVERSE, GATE = "gaspar2.examples:echo", "tests.handlers:Reverse", "tests.handlers:gate"
MODES = {
    "serve-echo": ("serve", ECHO, False),
    "embedded-reverse": ("embedded", REVERSE, False),
    "patched-echo": ("embedded", ECHO, True),
    "patched-reverse": ("embedded", REVERSE, True),
    "wsgi-patched-reverse": ("wsgi", REVERSE, True),
    "unix-file-echo": ("unix", ECHO, False),
    "remote-echo": ("remote", GATE, False),
    # Shared memory off: every body, to the largest, travels through ZeroMQ.
    "serve-echo-zeromq": ("serve", ECHO, False),
    "patched-reverse-zeromq": ("embedded", REVERSE, True),
}
NO_SHM = ("--shm-threshold", "0")


def start_cli(name, handler, directory, *extra):
    args = ["--workers", "2", "--max-message-size", str(MAX_MESSAGE_SIZE),
            "--graceful-timeout", GRACE, *extra]
    return Server(handler, args, directory / "server.log", env=environment()).wait_serving()


def start_embedded(name, handler, directory, patch, wsgi, workers=2, extra=()):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "sizes_app.py"), handler,
           "--workers", str(workers), "--max-message-size", str(MAX_MESSAGE_SIZE),
           "--request-timeout", str(REQUEST_TIMEOUT), "--graceful-timeout", GRACE, *extra]
    cmd += ["--patch"] * patch + ["--wsgi"] * wsgi
    server = Server(None, None, directory / "server.log", env=environment(), cmd=cmd)
    server.wait_serving()
    # The program runs as asked, on this tree's gaspar2.
    expected = "socket patched: %s; gaspar2 from %s" % (patch, os.path.join(ROOT, "gaspar2"))
    assert expected in server.log(), server.log()
    return server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RemoteGroup:
    """A ``gaspar2 worker`` group of two, joined to a producer's remote endpoint."""

    def __init__(self, handler, endpoint, log_path):
        self.log_file = open(log_path, "wb")    # noqa: SIM115 (closed by stop)
        cmd = [sys.executable, "-m", "gaspar2", "worker", handler, "--connect", endpoint,
               "--workers", "2", "--listen", "127.0.0.1", "--heartbeat", HEARTBEAT,
               "--max-message-size", str(MAX_MESSAGE_SIZE)]
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     cwd=ROOT, env=environment(), start_new_session=True)

    def stop(self):
        if self.proc.poll() is None:
            tree = [self.proc.pid, *children(self.proc.pid)]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            wait_for(lambda: not any(alive(pid) for pid in tree), 10, message="the group gone")
        self.log_file.close()


def start_remote(name, handler, directory):
    port = free_port()
    access_log = str(directory / "access.log")
    server = Server(handler, ["--workers", "1", "--max-message-size", str(MAX_MESSAGE_SIZE),
                              "--remote-workers", "tcp://127.0.0.1:%d" % port,
                              "--heartbeat", HEARTBEAT, "--access-logfile", access_log,
                              "--graceful-timeout", GRACE],
                    directory / "server.log", env=environment()).wait_serving()
    # Keep the one local worker busy before any remote worker joins, so that it is the one
    # that takes this request; a worker running a slow request is sent nothing new.
    gate = directory / "gate"
    pool = concurrent.futures.ThreadPoolExecutor(1)
    held = pool.submit(client.request, server.url, b"gate:%s" % str(gate).encode(), 600)
    local = int(wait_for(lambda: gate.exists() and gate.read_text(), message="the gate taken"))
    assert server.worker_pids() == [local]
    target = Target(name, server, reverse=False, holder=(gate, held, pool, local))
    target.access_log = access_log
    target.group = RemoteGroup(handler, "tcp://127.0.0.1:%d" % port, directory / "group.log")
    wait_for(lambda: server.log().count("joined from") == 2, message="two remote workers")
    return target


def stop(target):
    try:
        if target.holder is not None:
            gate, held, pool, local = target.holder
            gate.unlink()
            assert int(held.result(60)) == local
            pool.shutdown()
    finally:
        if target.group is not None:
            target.group.stop()
        target.server.stop()


def launch(name, directory, workers=2):
    """A serving Target for the mode ``name``, its logs in ``directory``; ``workers`` is
    the embedded program's number of workers."""
    kind, handler, patch = MODES[name]
    if kind == "remote":
        return start_remote(name, handler, directory)
    extra = NO_SHM if name.endswith("-zeromq") else ()
    if kind == "serve":
        return Target(name, start_cli(name, handler, directory, *extra),
                      reverse=handler == REVERSE)
    if kind == "unix":
        path = directory / "g.sock"
        target = UnixFileTarget(name, start_cli(name, handler, directory, "--bind",
                                                "unix:%s" % path), reverse=False)
        target.url = "unix:%s" % path
        return target
    server = start_embedded(name, handler, directory, patch, kind == "wsgi", workers, extra)
    if kind != "wsgi":
        return Target(name, server, reverse=handler == REVERSE)
    target = WSGITarget(name, server, reverse=handler == REVERSE)
    match = re.search(r"http on (\S+):(\d+)", server.wait_log(r"http on \S+:\d+"))
    target.http = (match.group(1), int(match.group(2)))
    return target


@pytest.fixture(scope="module", params=list(MODES))
def target(request, tmp_path_factory):
    target = launch(request.param, tmp_path_factory.mktemp(request.param))
    try:
        yield target
    finally:
        stop(target)


# -- the tests ------------------------------------------------------------------------------

def test_the_sweep_covers_every_threshold():
    for threshold in THRESHOLDS:
        assert {threshold - 1, threshold} <= set(SIZES)
        assert threshold == MAX_MESSAGE_SIZE or threshold + 1 in SIZES
    assert {0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 262143, 262144, 262145,
            MiB - 1, MiB, MiB + 1, MAX_MESSAGE_SIZE - 1, MAX_MESSAGE_SIZE} <= set(SIZES)
    assert any(64 * 1024 < size < 256 * 1024 for size in SIZES if size % GRAIN)
    for low, high in itertools.pairwise(THRESHOLDS):
        assert any(low + 1 < size < high - 1 for size in SIZES), (low, high)


@pytest.mark.parametrize("size", SIZES)
def test_each_size_alone(target, size):
    assert target.round([size], "alone") == [(size, "ok")]


def test_the_whole_sweep_at_once(target):
    results = target.round(SIZES, "together")
    assert [size for size, _ in results] == SIZES


def test_the_sweep_in_shuffled_groups_of_eight(target):
    sizes = list(SIZES)
    random.Random(8).shuffle(sizes)
    answered = []
    for start in range(0, len(sizes), 8):
        answered += target.round(sizes[start:start + 8], "group%d" % start)
    assert sorted(size for size, _ in answered) == SIZES


def test_one_byte_past_the_limit_is_refused_with_a_reset(target):
    too_long = make_body(MAX_MESSAGE_SIZE + 1, 0, "past")
    assert target.outcome(too_long, {}, {}) == "reset"
    # The length prefix alone is refused too, unread.
    assert exchange(target.server, struct.pack("!I", MAX_MESSAGE_SIZE + 1))[0] == "reset"
    # And the producer serves on.
    target.round([MAX_MESSAGE_SIZE, 1], "after")


# Whatever a process does once, at its first large message (start a thread, map memory,
# import something), happens in the module's servers at whichever size comes first: these
# tests give that first time to every mode and to every size.

@pytest.mark.parametrize("name", list(MODES))
def test_a_fresh_producer_takes_the_whole_sweep_at_once(name, tmp_path):
    target = launch(name, tmp_path)
    try:
        results = target.round(SIZES, "fresh")
        assert [size for size, _ in results] == SIZES
    finally:
        stop(target)


@pytest.mark.parametrize("size", SIZES)
def test_each_size_first_in_a_fresh_monkey_patched_producer(size, tmp_path):
    # One worker, and a small second request sent once the first is at that worker: a
    # batch that reached the worker only in part would take the next one with it.
    target = launch("patched-reverse-zeromq", tmp_path, workers=1)
    try:
        first, second = make_body(size, 0, "first"), make_body(16, 1, "second")
        meant = {digest(target.reply_for(first)): size, digest(target.reply_for(second)): 16}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            outcomes = [pool.submit(target.outcome, first, meant, meant)]
            wait_for(lambda: outcomes[0].done() or target.server.status()["at_workers"],
                     message="the first request at the worker")
            outcomes.append(pool.submit(target.outcome, second, meant, meant))
            results = [(size, outcomes[0].result()), (16, outcomes[1].result())]
        assert_all_ok(target, results)
    finally:
        stop(target)
