"""Workers dying, fork hygiene, and stopping: real processes, real signals."""

import concurrent.futures
import os
import signal
import time

import pytest

from gaspar2 import client

from conftest import alive, connect, wait_for

pytestmark = pytest.mark.timeout(120)


def start_marked(pool, server, marker, seconds):
    """Send a request that writes its worker's pid to ``marker`` and then sleeps."""
    future = pool.submit(client.request, server.url,
                         ("mark:%s:%s" % (marker, seconds)).encode(), 60)
    pid = int(wait_for(lambda: marker.exists() and marker.read_text(), message="%s" % marker))
    return future, pid


def test_killed_worker_fails_its_request_and_nothing_else(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        doomed, victim = start_marked(pool, server, tmp_path / "a", 60)
        other, survivor = start_marked(pool, server, tmp_path / "b", 1)
        # Both workers are busy: these wait in the producer (or are given back to it).
        queued = [pool.submit(client.request, server.url, b"q%d" % i, 60) for i in range(6)]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(client.RequestFailed, match="reset"):
            doomed.result()
        assert time.monotonic() - killed_at < 1.0
        assert int(other.result()) == survivor
        assert [f.result() for f in queued] == [b"q%d" % i for i in range(6)]
    pids = server.wait_workers(2, exclude=[victim])
    assert survivor in pids
    assert "killed by SIGKILL while running this request" in server.log()
    served = {int(client.request(server.url, b"pid:0.2", timeout=30)) for _ in range(4)}
    assert served <= set(pids)


def test_worker_exiting_in_handler(serve):
    server = serve("tests.handlers:work", "--workers", "1")
    (first,) = server.worker_pids()
    with pytest.raises(client.RequestFailed, match="reset"):
        client.request(server.url, b"exit", timeout=30)
    assert client.request(server.url, b"back", timeout=30) == b"back"
    assert server.worker_pids() != [first]
    assert "exited with status 7 while running this request" in server.log()


def socket_inodes(pid):
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def tcp_inodes():
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in list(f)[1:]:
                inodes.add(int(line.split()[9]))
    return inodes


def assert_clean(worker, producer):
    mine = socket_inodes(worker)
    assert not mine & socket_inodes(producer), (
        "worker %d shares a socket with the producer" % worker)
    assert not mine & tcp_inodes(), "worker %d holds a TCP socket" % worker


def test_workers_inherit_no_socket_even_when_respawned(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # A client connection is open in the producer while workers are (re)forked.
        held, busy = start_marked(pool, server, tmp_path / "held", 3)
        idle = next(p for p in server.worker_pids() if p != busy)
        assert socket_inodes(server.pid) & tcp_inodes(), "the producer's sockets must be visible"
        os.kill(idle, signal.SIGKILL)
        (fresh,) = set(server.wait_workers(2, exclude=[idle])) - {busy}
        for worker in (busy, fresh):
            assert_clean(worker, server.pid)
        assert_clean(server.forkserver(), server.pid)
        assert int(held.result()) == busy      # its EOF came without waiting on any worker


def test_sigterm_finishes_requests_then_exits_0(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, _ = start_marked(pool, server, tmp_path / "a", 1)
        second, _ = start_marked(pool, server, tmp_path / "b", 1)
        tree, workers = server.descendants(), set(server.worker_pids())
        server.signal(signal.SIGTERM)
        server.wait_log("SIGTERM: stopping gracefully")
        with pytest.raises(ConnectionRefusedError):
            connect(server)
        assert {int(first.result()), int(second.result())} == workers
    assert server.wait_exit() == 0
    wait_for(lambda: not any(alive(p) for p in tree), 10, message="workers gone")


def test_sigint_past_graceful_timeout_resets_and_exits_0(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "1", "--graceful-timeout", "0.5")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck, _ = start_marked(pool, server, tmp_path / "a", 60)
        tree = server.descendants()
        server.signal(signal.SIGINT)
        with pytest.raises(client.RequestFailed, match="reset"):
            stuck.result()
    assert server.wait_exit() == 0
    assert "stopped before this request was answered" in server.log()
    wait_for(lambda: not any(alive(p) for p in tree), 10, message="workers gone")


def test_workers_die_with_a_killed_producer(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        busy, _ = start_marked(pool, server, tmp_path / "a", 60)
        tree = server.descendants()
        assert len(tree) == 4, "the fork server, a preloader and 2 workers"
        server.signal(signal.SIGKILL)
        wait_for(lambda: not any(alive(p) for p in tree), 2.0, message="no orphan within 2 s")
        with pytest.raises(client.RequestFailed):
            busy.result()
