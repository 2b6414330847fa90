"""Timeouts, limits and worker supervision, against a real server."""

import concurrent.futures
import re
import resource
import struct
import time

import pytest

from gaspar2 import client

from conftest import Server, connect, wait_for

pytestmark = pytest.mark.timeout(120)


def test_request_timeout_resets_and_drops_the_late_answer(serve):
    # A worker_timeout past the handler's time lets the late answer come back.
    server = serve("tests.handlers:work", "--workers", "1", "--timeout", "0.5",
                   "--worker-timeout", "30")
    began = time.monotonic()
    with pytest.raises(client.RequestFailed, match="reset"):
        client.request(server.url, b"pid:1.5", timeout=30)
    assert time.monotonic() - began < 1.4
    server.wait_log(r"no answer within 0.5 s \(timeout\)")
    server.wait_log("dropped the late answer")
    assert client.request(server.url, b"fine", timeout=30) == b"fine"


def test_worker_timeout_kills_a_runaway_handler(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2", "--worker-timeout", "1")
    before = server.worker_pids()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        runaway = pool.submit(client.request, server.url, b"pid:3600", 60)
        # the other worker keeps serving meanwhile
        for _ in range(5):
            assert client.request(server.url, b"ok", timeout=30) == b"ok"
        with pytest.raises(client.RequestFailed, match="reset"):
            runaway.result()
    server.wait_log(r"worker_timeout 1.0 s\): killing it")
    after = server.wait_workers(2, exclude=set(before) - set(server.worker_pids()) or [0])
    assert len(set(after) - set(before)) == 1


def test_request_timeout_alone_replaces_the_worker_stuck_on_it(serve):
    server = serve("tests.handlers:work", "--workers", "1", "--timeout", "0.5")
    (stuck,) = server.worker_pids()
    with pytest.raises(client.RequestFailed, match="reset"):
        client.request(server.url, b"pid:3600", timeout=30)
    server.wait_log(r"worker_timeout 0.5 s\): killing it")
    (fresh,) = server.wait_workers(1, exclude=[stuck])
    assert client.request(server.url, b"pid", timeout=30) == str(fresh).encode()


def test_slow_loris_is_dropped_after_read_timeout(serve):
    server = serve("gaspar2.examples:echo", "--workers", "1", "--read-timeout", "0.5")
    with connect(server) as idle, connect(server) as trickler:
        trickler.sendall(struct.pack("!I", 10) + b"abc")
        began = time.monotonic()
        for sock in (idle, trickler):
            with pytest.raises(ConnectionResetError):
                sock.recv(10)
        assert time.monotonic() - began < 10
    server.wait_log(r"no whole frame within 0.5 s \(read_timeout\)")
    assert client.request(server.url, b"next", timeout=30) == b"next"


def test_max_connections_leaves_the_rest_in_the_listen_queue(serve):
    server = serve("gaspar2.examples:echo", "--workers", "1", "--max-connections", "3",
                   "--read-timeout", "60")
    holders = [connect(server) for _ in range(3)]
    wait_for(lambda: server.status()["connections"] == 3, message="3 connections accepted")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.request, server.url, b"queued", 30)
        # The kernel completes the handshake; the producer does not accept past 3.
        assert server.status()["connections"] == 3
        assert not waiting.done()
        holders.pop().close()
        assert waiting.result() == b"queued"
    for sock in holders:
        sock.close()


def test_open_file_limit_is_raised_and_logged(serve):
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    server = serve("gaspar2.examples:echo", "--workers", "1")
    match = re.search(r"open-file limit (\d+)", server.log())
    assert match and int(match.group(1)) == hard


def test_max_requests_replaces_workers_without_failing_anything(serve):
    server = serve("tests.handlers:work", "--workers", "2", "--max-requests", "10",
                   "--max-requests-jitter", "5")
    seen = set()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: client.request(server.url, b"pid", timeout=30),
                                range(120)))
    seen = {int(r) for r in replies}
    assert len(seen) >= 120 // 15, "workers were not replaced: %r" % seen
    assert "(max_requests): replacing it" in server.log()
    assert "while running this request" not in server.log()
    server.wait_workers(2)


def test_failing_setup_backs_off_instead_of_forking_in_a_loop(tmp_path):
    # Setup succeeds for the first workers only (a marker file counts starts), then fails.
    module = tmp_path / "flaky.py"
    module.write_text(
        "import os, gaspar2\n"
        "class Flaky(gaspar2.Consumer):\n"
        "    def setup(self):\n"
        "        path = os.path.join(os.path.dirname(__file__), 'starts')\n"
        "        with open(path, 'a') as f: f.write('x')\n"
        "        if os.path.getsize(path) > 1: raise RuntimeError('database is down')\n"
        "    def handle(self, m):\n"
        "        os._exit(3) if m == b'die' else None\n"
        "        return m\n")
    server = Server("flaky:Flaky", ["--workers", "1"], tmp_path / "log", cwd=tmp_path)
    try:
        server.wait_serving()
        with pytest.raises(client.RequestFailed):
            client.request(server.url, b"die", timeout=30)
        log = server.wait_log(r"cannot start \(import or setup\(\) failed.*\): next try in 0\.4 s",
                              timeout=30)
        assert "RuntimeError: database is down" in log
        starts = (tmp_path / "starts").read_text()
        assert 3 <= len(starts) < 10, "%d starts: no backoff" % len(starts)
    finally:
        server.stop()
