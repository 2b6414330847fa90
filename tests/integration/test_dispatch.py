"""Readiness, fair dispatch and handler errors, against a real server."""

import concurrent.futures
import time

import pytest

from gaspar2 import client

from conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def test_first_requests_reach_every_worker(serve):
    # Workers take different times to start; serving must wait for the slowest.
    server = serve("tests.handlers:SlowSetup", "--workers", "3")
    assert server.workers == 3
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        pids = list(pool.map(lambda _: client.request(server.url, b"0.3", timeout=30), range(6)))
    assert {int(p) for p in pids} == set(server.worker_pids())


def test_quick_requests_never_wait_behind_a_slow_one(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    marker = tmp_path / "slow-started"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(client.request, server.url, b"mark:%s:3" % str(marker).encode(), 30)
        slow_pid = int(wait_for(lambda: marker.exists() and marker.read_text()))
        durations, pids = [], set()
        for _ in range(50):
            began = time.monotonic()
            pids.add(int(client.request(server.url, b"pid", timeout=30)))
            durations.append(time.monotonic() - began)
        assert not slow.done(), "the quick requests must finish while the slow one still runs"
        assert int(slow.result()) == slow_pid
    assert slow_pid not in pids
    assert max(durations) < 1.0, "a quick request waited: %.3f s" % max(durations)


def test_handler_error_resets_only_that_request(serve):
    server = serve("tests.handlers:work", "--workers", "1")
    (pid,) = server.worker_pids()
    with pytest.raises(client.RequestFailed, match="reset"):
        client.request(server.url, b"fail", timeout=30)
    assert client.request(server.url, b"after", timeout=30) == b"after"
    with pytest.raises(client.RequestFailed, match="reset"):
        client.request(server.url, b"bad", timeout=30)
    assert client.request(server.url, b"pid", timeout=30) == str(pid).encode()
    log = server.wait_log("returned int")
    assert "RuntimeError: asked to fail" in log
    assert "Traceback" in log


def test_str_replies_are_utf8(serve):
    server = serve("tests.handlers:upper", "--workers", "1")
    reply = client.request(server.url, "héllo", timeout=30)
    prefix, _, rest = reply.partition(b":")
    assert int(prefix) in server.worker_pids()
    assert rest == "HÉLLO".encode()


def test_consumer_subclass_and_function_targets(serve):
    server = serve("tests.handlers:Upper", "--workers", "1")
    assert client.request(server.url, b"abc", timeout=30).endswith(b":ABC")
    server = serve("gaspar2.examples:sha256_chain", "--workers", "1")
    assert len(client.request(server.url, b"10", timeout=30)) == 64
