"""Load, chaos and hostile clients against a real server. The CI versions are scaled down;
``--heavy`` runs the full sizes."""

import collections
import concurrent.futures
import os
import random
import re
import resource
import selectors
import signal
import socket
import struct
import time

import pytest

from gaspar2 import client, settings

from conftest import Load, alive, connect, wait_for

pytestmark = pytest.mark.timeout(300)
MiB = 2**20
DIED = re.compile(r"(worker \d+ \(pid \d+\)) killed by SIGKILL (?:while|after) running this "
                  r"request")


def raise_fd_limit():
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def settled(server, baseline, workers):
    """Wait until the producer is back to its idle state; return its status."""
    def back():
        s = server.status()
        return s if (s["connections"] == 0 and s["at_workers"] == 0 and s["workers"] == workers
                     and s["open_files"] <= baseline["open_files"]) else None
    current = wait_for(back, 30, interval=0.2, message="the producer back at rest")
    assert current["greenlets"] <= baseline["greenlets"]
    return current


@pytest.mark.parametrize("seconds", [pytest.param(5, id="5s"),
                                     pytest.param(30, id="30s", marks=pytest.mark.heavy)])
def test_worker_chaos(serve, seconds):
    server = serve("gaspar2.examples:echo", "--workers", "2")
    baseline = server.status()
    load = Load(server.url, 64, lambda rng: os.urandom(rng.randint(0, 2000)))
    kills, rng = 0, random.Random(1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass
        load.stopping.wait(0.25)     # the kill rate of the test, not a synchronisation
    outcomes = load.stop()
    assert set(outcomes) <= {"ok", "reset"}, outcomes
    assert outcomes["ok"] > 0
    # Every reset is a request a killed worker had begun, logged as such: the one it ran
    # ("while running"), and on a loaded machine those it had finished whose replies died
    # with it, still in its ZeroMQ I/O thread ("after running"); never more than the window
    # it may hold.
    def failed_by_kills():
        found = DIED.findall(server.log())
        return (found,) if len(found) >= outcomes["reset"] else None
    (died,) = wait_for(failed_by_kills, message="a log line for each of %r" % outcomes)
    assert len(died) == outcomes["reset"], (outcomes, died)
    assert len(set(died)) <= kills, (died, kills)
    assert max(collections.Counter(died).values(), default=0) <= settings.DEFAULTS["window"]
    settled(server, baseline, 2)
    print("chaos: %d kills, %r" % (kills, dict(outcomes)))


def hostile_connection(server, kind, rng):
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        if kind == "random":
            sock.sendall(os.urandom(rng.randint(1, 64)))
        elif kind == "cut":
            sock.sendall(struct.pack("!I", 100) + os.urandom(rng.randint(0, 99)))
        elif kind == "huge":
            sock.sendall(struct.pack("!I", rng.randint(1025, 2**32 - 1)))
        elif kind == "reset":
            sock.sendall(struct.pack("!I", 10) + b"abc")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def slow_clients(server, idle, tricklers, read_timeout):
    """Idle and one-byte-at-a-time clients: each must be dropped after read_timeout."""
    socks = [connect(server) for _ in range(idle + tricklers)]
    for sock in socks:
        sock.setblocking(False)
    dropped, deadline = set(), time.monotonic() + read_timeout * 10 + 10
    while len(dropped) < len(socks) and time.monotonic() < deadline:
        for n, sock in enumerate(socks):
            if n in dropped:
                continue
            try:
                if n >= idle:
                    sock.send(b"\x00")
                if sock.recv(1) == b"":
                    dropped.add(n)
            except BlockingIOError:
                pass
            except OSError:
                dropped.add(n)
        time.sleep(0.2)     # the trickle rate of these clients
    for sock in socks:
        sock.close()
    return len(dropped)


@pytest.mark.parametrize("count", [pytest.param(3000, id="3k"),
                                   pytest.param(100000, id="100k", marks=pytest.mark.heavy)])
def test_hostile_clients(serve, count):
    raise_fd_limit()
    server = serve("gaspar2.examples:echo", "--workers", "2", "--max-message-size", "1024",
                   "--read-timeout", "1")
    assert client.request(server.url, b"warm", timeout=30) == b"warm"
    baseline, rss_before = server.status(), server.memory()
    kinds = ["random", "cut", "huge", "reset", "empty"]

    def batch(seed):
        rng = random.Random(seed)
        for _ in range(count // 8):
            hostile_connection(server, rng.choice(kinds), rng)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, range(8)))
    assert slow_clients(server, idle=100, tricklers=50, read_timeout=1) == 150
    for n in range(50):
        assert client.request(server.url, b"fine %d" % n, timeout=30) == b"fine %d" % n
    settled(server, baseline, 2)
    growth = server.memory() - rss_before
    print("hostile: %d connections, RSS growth %.1f MiB" % (count, growth / MiB))
    assert growth < 32 * MiB


@pytest.mark.parametrize("count", [pytest.param(2000, id="2k"),
                                   pytest.param(10000, id="10k", marks=pytest.mark.heavy)])
def test_many_concurrent_clients(serve, count):
    raise_fd_limit()
    server = serve("gaspar2.examples:sleep", "--workers", "2")
    rss_before = server.memory()
    socks = [connect(server) for _ in range(count)]
    wait_for(lambda: server.status()["connections"] == count, 60, interval=0.2,
             message="%d connections open at once" % count)
    selector = selectors.DefaultSelector()
    replies = {}
    for n, sock in enumerate(socks):
        sock.sendall(client.pack(b"0.0001"))
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, n)
        replies[n] = b""
    deadline, done = time.monotonic() + 240, 0
    while done < count and time.monotonic() < deadline:
        for key, _ in selector.select(1):
            chunk = key.fileobj.recv(100)
            replies[key.data] += chunk
            if not chunk:
                selector.unregister(key.fileobj)
                key.fileobj.close()
                done += 1
    assert done == count and set(replies.values()) == {b"0.0001"}
    peak = server.memory("VmHWM")
    print("many clients: %d, producer peak RSS %.1f MiB, %.1f KiB per connection"
          % (count, peak / MiB, (peak - rss_before) / count / 1024))


def test_graceful_stop_under_load(serve):
    server = serve("tests.handlers:work", "--workers", "2")
    socks = []
    for n in range(200):
        sock = connect(server)
        sock.sendall(client.pack(b"r%d" % n))
        socks.append(sock)
    # Every request is received (a whole frame read) before the signal.
    wait_for(lambda: (lambda s: s["accepted"] == 200 and s["reading"] == 0)(server.status()))
    tree = server.descendants()
    server.signal(signal.SIGTERM)
    for n, sock in enumerate(socks):
        assert sock.makefile("rb").read() == b"r%d" % n
        sock.close()
    assert server.wait_exit() == 0
    wait_for(lambda: not any(alive(p) for p in tree), 10, message="no orphan")


def test_graceful_timeout_under_load(serve):
    server = serve("tests.handlers:work", "--workers", "2", "--graceful-timeout", "0.5",
                   )
    socks = []
    for _ in range(200):
        sock = connect(server)
        sock.sendall(client.pack(b"pid:0.05"))
        socks.append(sock)
    wait_for(lambda: (lambda s: s["accepted"] == 200 and s["reading"] == 0)(server.status()))
    tree = server.descendants()
    server.signal(signal.SIGTERM)
    outcomes = collections.Counter()
    for sock in socks:
        try:
            reply = sock.makefile("rb").read()
            outcomes["ok" if int(reply) in tree else "wrong"] += 1
        except ConnectionResetError:
            outcomes["reset"] += 1
        sock.close()
    assert server.wait_exit() == 0
    assert set(outcomes) == {"ok", "reset"}, outcomes
    wait_for(lambda: not any(alive(p) for p in tree), 10, message="no orphan")


def test_64_mib_request_and_reply_memory(serve):
    server = serve("gaspar2.examples:echo", "--workers", "2")
    base = server.memory()
    payload = os.urandom(MiB) * 64
    assert client.request(server.url, payload, timeout=120) == payload
    peak = server.memory("VmHWM")
    print("64 MiB echo: producer peak RSS %.0f MiB over a %.0f MiB base (%.1f x payload)"
          % (peak / MiB, base / MiB, (peak - base) / (64 * MiB)))
    assert peak - base < 4 * 64 * MiB
