"""Hostile peers on the remote-workers endpoint without CURVE, scaled down: messages of
many frames, and floods of HELLOs that never finish the handshake. A normal client is
served throughout; ``--heavy`` runs the sizes of the issue's figures."""

import concurrent.futures
import random
import re
import socket
import struct
import threading
import time

import pytest
import zmq

from gaspar2 import client
from gaspar2.protocol import wire

from conftest import wait_for
from test_remote import Group, free_port, pids_serving

pytestmark = pytest.mark.timeout(120)
MiB = 2**20
HEARTBEAT = "0.3"
FRAME_COST = 64         # what libzmq holds per frame of a message it has not delivered yet


def rss(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * 4096


class ZmtpPush:
    """A PUSH peer speaking ZMTP 3.0 (NULL) by hand over a plain TCP socket, so that a
    message of millions of frames costs the test a few bytes each, not a pyzmq call."""

    def __init__(self, endpoint):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0")
                          + bytes(32))
        ready = b"\x05READY\x0bSocket-Type" + struct.pack("!I", 4) + b"PUSH"
        self.sock.sendall(b"\x04" + bytes([len(ready)]) + ready)
        greeting = b""
        while len(greeting) < 64:
            greeting += self.sock.recv(64 - len(greeting))

    def empty_frames(self, count):
        """One message of ``count`` empty frames: two bytes each on the wire."""
        self.sock.sendall(b"\x01\x00" * (count - 1) + b"\x00\x00")

    def frames(self, sizes):
        """One message of frames of these sizes."""
        for i, size in enumerate(sizes):
            more = 1 if i < len(sizes) - 1 else 0
            self.sock.sendall(struct.pack("!BQ", 2 | more, size))
            self.sock.sendall(bytes(size))

    def close(self):
        self.sock.close()


class Client:
    """A normal client: one echo request after another until stopped; every outcome and
    latency kept."""

    def __init__(self, server):
        self.server = server
        self.stop = threading.Event()
        self.outcomes, self.latencies = [], []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        n = 0
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                ok = client.request(self.server.url, b"echo %d" % n, timeout=10) == b"echo %d" % n
            except client.RequestFailed as exc:
                ok = repr(exc)
            self.latencies.append(time.monotonic() - began)
            self.outcomes.append(ok)
            n += 1
            self.stop.wait(0.01)        # the client's pace, not a synchronisation

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        assert self.outcomes and all(o is True for o in self.outcomes), self.outcomes
        return max(self.latencies)


class Peak:
    """The producer's largest resident size, sampled until stopped."""

    def __init__(self, pid):
        self.pid, self.peak = pid, rss(pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, rss(self.pid))

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        return self.peak


def serve_plain_remote(serve, *extra):
    port = free_port()
    endpoint = "tcp://127.0.0.1:%d" % port
    server = serve("tests.handlers:work", "--workers", "1", "--remote-workers", endpoint,
                   "--heartbeat", HEARTBEAT, *extra)
    return server, endpoint


def attack_with_long_messages(serve, frames, messages, max_size):
    server, endpoint = serve_plain_remote(serve, "--max-message-size", str(max_size))
    for n in range(5):
        assert client.request(server.url, b"warm %d" % n, timeout=10) == b"warm %d" % n
    base = rss(server.pid)
    dropped = server.status()["dropped"]
    normal, peak = Client(server), Peak(server.pid)
    attacker = ZmtpPush(endpoint)
    began = time.monotonic()
    for _ in range(messages):
        attacker.empty_frames(frames)
    attacker.frames([max_size // 2] * 3)          # three frames, together over the limit
    wait_for(lambda: server.status()["dropped"] >= dropped + messages + 1, 60,
             message="the long messages dropped")
    took = time.monotonic() - began
    # The endpoint reads on: a small malformed message after them is dropped too (from a
    # new connection: ZeroMQ's heartbeat may have dropped the attacker's, silent since).
    probe = ZmtpPush(endpoint)
    probe.frames([3])
    wait_for(lambda: server.status()["dropped"] >= dropped + messages + 2,
             message="the endpoint reading on")
    after = wait_for(lambda: (lambda r: r if r < base + 2 * max_size + 8 * MiB else None)(
        rss(server.pid)), 10, interval=0.05, message="memory handed back")
    highest, worst = peak.finish(), normal.finish()
    attacker.close()
    probe.close()
    assert server.status()["dropped"] == dropped + messages + 2
    return server, base, highest, after, worst, took


def test_long_multipart_messages_stall_nothing_and_are_not_kept(serve):
    """Messages of many empty frames: libzmq holds each whole (about 64 bytes a frame)
    before the producer can see it; the producer keeps none of the frames, throws them
    away a slice per loop iteration, and hands the memory back."""
    frames, messages, max_size = 300_000, 2, MiB
    server, base, highest, _after, worst, took = attack_with_long_messages(
        serve, frames, messages, max_size)
    libzmq = FRAME_COST * frames * messages
    print("%d x %d frames: peak +%.1f MiB (libzmq's share %.1f MiB), worst latency "
          "%.3f s, dropped in %.2f s" % (messages, frames, (highest - base) / MiB,
                                         libzmq / MiB, worst, took))
    assert highest - base < libzmq + 2 * max_size + 16 * MiB
    assert worst < 0.5, "a normal request waited %.2f s" % worst
    assert "Traceback" not in server.log()


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_heavy_long_multipart_messages(serve):
    frames, messages, max_size = 3_000_000, 2, 64 * MiB
    _server, base, highest, after, worst, took = attack_with_long_messages(
        serve, frames, messages, max_size)
    print("%d x %d frames: peak +%.1f MiB, after +%.1f MiB, worst latency %.3f s, dropped in "
          "%.2f s" % (messages, frames, (highest - base) / MiB, (after - base) / MiB, worst,
                      took))


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_heavy_large_frames(serve):
    """Not bounded without CURVE: libzmq holds a message's frames until its last arrives."""
    server, endpoint = serve_plain_remote(serve)
    base = rss(server.pid)
    normal, peak = Client(server), Peak(server.pid)
    dropped = server.status()["dropped"]
    attacker = ZmtpPush(endpoint)
    attacker.frames([50 * MiB] * 61)
    wait_for(lambda: server.status()["dropped"] > dropped, 120, message="the message dropped")
    highest, worst = peak.finish(), normal.finish()
    after = rss(server.pid)
    attacker.close()
    print("61 x 50 MiB: peak +%.1f MiB, after +%.1f MiB, worst latency %.3f s"
          % ((highest - base) / MiB, (after - base) / MiB, worst))


# -- forged HELLOs ----------------------------------------------------------------------------

class Listener:
    """An unrelated local TCP service that counts the connections it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        self.sock.close()


def flood_hellos(endpoint, targets, stop, rate, sent):
    """HELLOs with fresh worker ids naming ``targets`` in turn, about ``rate`` a second,
    from one PUSH socket, until ``stop``."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.connect(endpoint)
    rng = random.Random(5)
    try:
        while not stop.is_set():
            for _ in range(rate // 50):
                head = wire.encode_head(wire.HELLO, rng.randrange(2**32, 2**63), 0, 1)
                push.send_multipart([head, rng.choice(targets), b""])
                sent.append(1)
            stop.wait(0.02)
    finally:
        push.close()
        ctx.term()


def hello_flood(serve, tmp_path, rate, seconds, least):
    """Flood for ``least`` seconds at least, and on until a real worker has joined (for
    ``seconds`` at most): return the server, the join's delay after the worker's start,
    the normal client's worst latency, the connections the unrelated service got, the
    HELLOs sent, and the flood's length."""
    server, endpoint = serve_plain_remote(serve, "--max-remote-workers", "8")
    unrelated = Listener()
    own = server.port
    remote_port = int(endpoint.rpartition(":")[2])
    targets = [b"tcp://127.0.0.1:%d" % own, b"tcp://0.0.0.0:%d" % own,
               b"tcp://127.0.0.1:%d" % unrelated.port, b"tcp://127.0.0.1:%d" % remote_port,
               b"tcp://localhost:%d" % unrelated.port, b"tcp://127.0.0.1:%d" % free_port()]
    normal = Client(server)
    stop, sent = threading.Event(), []
    group, joined = None, None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        flood = pool.submit(flood_hellos, endpoint, targets, stop, rate, sent)
        try:
            wait_for(lambda: len(sent) > rate // 4, message="the flood under way")
            began = time.monotonic()
            group = Group(endpoint, None, None, tmp_path / "group.log", workers=1)

            def over():
                nonlocal joined
                elapsed = time.monotonic() - began
                if joined is None and "joined from" in server.log():
                    joined = elapsed
                return elapsed > seconds or (joined is not None and elapsed > least)
            wait_for(over, seconds + 10, message="the flood's end")
            stop.set()
            flood.result()
            took = time.monotonic() - began
            worst = normal.finish()
            assert joined is not None, "no worker joined within %s s of its start" % seconds
            remote = set(wait_for(lambda: len(group.pids()) == 1 and group.pids()))
            assert pids_serving(server, 4) & remote
        finally:
            stop.set()
            if group is not None:
                group.stop()
            unrelated.close()
    return server, joined, worst, unrelated.accepted, len(sent), took


def test_forged_hellos_keep_no_worker_out_and_name_no_connection(serve, tmp_path):
    """A flood of HELLOs that never finish the handshake, naming the producer's own ports,
    an unrelated local service, a name and a closed port: a real worker still joins at once,
    the producer connects to none of its own addresses and only a handful of times to the
    service, and the refusals cost a log line a second."""
    server, joined, worst, accepted, sent, seconds = hello_flood(serve, tmp_path, 1000, 6, 1.5)
    log = server.log()
    refusals = len(re.findall(r"remote endpoint: ignored", log))
    print("%d HELLOs in %.1f s: joined after %.2f s; %d connections to the unrelated "
          "service; %d refusal lines; worst latency %.3f s"
          % (sent, seconds, joined, accepted, refusals, worst))
    # A group takes about a second to start (its interpreter and imports) before it says HELLO.
    assert joined < 5, "the worker joined %.1f s after its start" % joined
    assert accepted <= 3, "%d connections to a service named in HELLOs" % accepted
    assert "bad frame" not in log, "the producer connected to its own client port"
    assert refusals <= seconds + 5
    assert worst < 1.0, "a normal request waited %.2f s" % worst


@pytest.mark.heavy
@pytest.mark.timeout(600)
def test_heavy_forged_hellos(serve, tmp_path):
    server, joined, worst, accepted, sent, seconds = hello_flood(serve, tmp_path, 2000, 15, 15)
    print("%d HELLOs in %.1f s: joined after %s s; %d connections to the unrelated service; "
          "%d bad frames; worst latency %.3f s" % (sent, seconds, joined, accepted,
                                                  server.log().count("bad frame"), worst))
