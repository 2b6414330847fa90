"""Large payloads through the shared arena, against real servers and workers: every size
comes back byte for byte, and nothing of the arena is held once its requests are done."""

import concurrent.futures
import os
import signal
import socket
import struct

import pytest

from gaspar2 import client

from conftest import connect, exchange, module_server, wait_for

pytestmark = pytest.mark.timeout(180)
THRESHOLD = 256 * 1024


def frame(payload):
    return struct.pack("!I", len(payload)) + payload


def shared_back_to_zero(server):
    return wait_for(lambda: server.status()["shared"] == 0, message="the arena empty again")


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    server = module_server(tmp_path_factory, "gaspar2.examples:echo", "--workers", "2")
    yield server
    server.stop()


@pytest.mark.parametrize("size", [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 1 << 20, 8 << 20])
def test_each_side_of_the_threshold_comes_back_whole(echo, size):
    payload = os.urandom(size)
    assert client.request(echo.url, payload, timeout=60) == payload
    shared_back_to_zero(echo)


def test_the_largest_allowed_message_and_one_past_it(serve):
    limit = 3 << 20
    server = serve("gaspar2.examples:echo", "--workers", "2", "--max-message-size", str(limit))
    payload = os.urandom(limit)
    assert client.request(server.url, payload, timeout=60) == payload
    assert exchange(server, struct.pack("!I", limit + 1))[0] == "reset"
    shared_back_to_zero(server)


def test_concurrent_large_requests_past_the_arena_go_through_zeromq(serve):
    server = serve("gaspar2.examples:echo", "--workers", "2", "--shm-size", "1MiB")
    payloads = [os.urandom(600_000 + n) for n in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda p: client.request(server.url, p, timeout=60), payloads))
    assert replies == payloads
    shared_back_to_zero(server)


def test_a_handler_that_takes_a_memoryview(serve):
    server = serve("tests.handlers:Reverse", "--workers", "1")
    for size in (10, 1 << 20):
        payload = os.urandom(size)
        assert client.request(server.url, payload, timeout=60) == payload[::-1]
    grown = os.urandom(THRESHOLD * 2)
    assert (client.request(server.url, b"twice:" + grown, timeout=60)
            == (b"twice:" + grown)[::-1] * 2)
    shared_back_to_zero(server)


def test_a_worker_killed_holding_a_large_request_resets_it_and_frees_its_region(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    marker = tmp_path / "marker"
    big = b"hold:%s:60:" % str(marker).encode()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        doomed = pool.submit(client.request, server.url, big + b"x" * (1 << 20), 60)
        victim = int(wait_for(lambda: marker.exists() and marker.read_text()))
        assert server.status()["shared"] > 0
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(client.RequestReset):
            doomed.result()
    shared_back_to_zero(server)
    assert client.request(server.url, b"y" * (1 << 20), timeout=60) == b"y" * (1 << 20)


def test_a_client_gone_mid_upload_frees_its_region(echo):
    with connect(echo) as sock:
        sock.sendall(struct.pack("!I", 4 << 20) + b"z" * (3 << 20))
        wait_for(lambda: echo.status()["shared"] > 0, message="the upload in the arena")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    shared_back_to_zero(echo)


def test_shared_memory_can_be_off(serve):
    server = serve("gaspar2.examples:echo", "--workers", "1", "--shm-threshold", "0")
    payload = os.urandom(1 << 20)
    assert client.request(server.url, payload, timeout=60) == payload
    assert server.status()["shared"] == 0
