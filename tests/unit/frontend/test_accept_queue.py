"""A listener tells how many connections wait in its accept queue (listeners.Listener.queued),
so that the request path accepts that many and no accept fails for want of one."""

import socket
import time

import pytest

from gaspar2.frontend.listeners import Listener


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


@pytest.mark.parametrize("family, host", [(socket.AF_INET, "127.0.0.1"),
                                          (socket.AF_INET6, "::1")])
def test_a_tcp_listener_counts_its_completed_connections(family, host):
    try:
        sock = socket.socket(family)
        sock.bind((host, 0))
    except OSError as exc:
        pytest.skip("no %s loopback here: %s" % (host, exc))
    sock.listen(16)
    listener = Listener(sock, "test")
    clients = []
    try:
        assert listener.queued() == 0
        for count in range(1, 4):
            clients.append(socket.create_connection(sock.getsockname()[:2]))
            wait_until(lambda count=count: listener.queued() == count)
        sock.accept()[0].close()
        assert listener.queued() == 2
    finally:
        for client in clients:
            client.close()
        sock.close()


def test_a_unix_listener_cannot_tell(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    sock.listen(4)
    try:
        assert Listener(sock, "test").queued() is None
    finally:
        sock.close()
