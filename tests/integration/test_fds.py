"""Out of file descriptors: a producer with a low open-file limit, crowded by idle clients
on every port it has, keeps its workers and serves again once the crowd leaves."""

import concurrent.futures
import re
import resource
import selectors
import signal
import socket
import threading
import urllib.request

import pytest

from gaspar2 import client

from conftest import wait_for
from test_remote import free_port, keys  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(180)
FILES = 256


def limit_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def raise_own_limit(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class Crowd:
    """Clients that connect and send nothing; with ``again``, each connects again whenever it
    is dropped."""

    def __init__(self, address, count, again=True):
        self.address = address
        self.again = again
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.reconnects = 0
        for _ in range(count):
            self._open()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _open(self):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(self.address)
        self.selector.register(sock, selectors.EVENT_READ)

    def _run(self):
        while not self.stop.is_set():
            for key, _ in self.selector.select(0.1):
                try:
                    data = key.fileobj.recv(1)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(key.fileobj)
                    key.fileobj.close()
                    self.reconnects += 1
                    if self.again:
                        self._open()

    def leave(self):
        self.stop.set()
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def no_abort(server):
    log = server.log()
    assert server.proc.poll() is None, log
    assert not re.search(r"Too many open files \(src/", log)
    assert log.count("accept failed") <= 30, "accept failures are not throttled"


def test_reconnecting_idle_clients_past_the_file_limit(serve):
    raise_own_limit(4096)
    server = serve("tests.handlers:work", "--workers", "2", "--max-requests", "5",
                   "--read-timeout", "0.5", preexec_fn=limit_files)
    crowd = Crowd((server.host, server.port), 600)
    try:
        wait_for(lambda: crowd.reconnects > 200, 60, message="the crowd dropped and back")
        old = server.worker_pids()
        server.signal(signal.SIGHUP)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda n: client.request(server.url, b"pid", 60), range(16)))
        assert all(int(r) > 0 for r in replies)
        server.wait_workers(2, exclude=old, timeout=60)
        no_abort(server)
    finally:
        crowd.leave()
    replies = {int(client.request(server.url, b"pid", timeout=30)) for _ in range(12)}
    assert len(replies) >= 2, "max_requests recycling stopped"
    server.wait_workers(2)
    no_abort(server)


def test_idle_crowds_on_the_metrics_and_remote_ports(serve, keys):  # noqa: F811
    raise_own_limit(4096)
    metrics, remote = free_port(), free_port()
    server = serve("tests.handlers:work", "--workers", "2", "--metrics", "127.0.0.1:%d" % metrics,
                   "--remote-workers", "tcp://127.0.0.1:%d" % remote,
                   "--curve-secret-key", str(keys / "producer.key_secret"),
                   "--curve-authorized", str(keys / "workers"), "--max-remote-workers", "8",
                   "--read-timeout", "60", preexec_fn=limit_files)
    crowds = [Crowd(("127.0.0.1", remote), 400, again=False)]
    try:
        server.wait_log("remote endpoint: .* cutting new ones")
        crowds += [Crowd(("127.0.0.1", port), 400, again=False) for port in (metrics, server.port)]
        # Accepting stops with files to spare: fewer than the 400 clients get in.
        wait_for(lambda: server.status()["open_files"] > FILES // 2, 60, message="files taken")
        status = server.status()
        assert status["remote_connections"] <= 2 * 8 + 16 and status["connections"] < 300
        old = server.worker_pids()
        server.signal(signal.SIGHUP)
        server.wait_workers(2, exclude=old, timeout=60)
        no_abort(server)
    finally:
        for crowd in crowds:
            crowd.leave()
    assert client.request(server.url, b"after the crowd", timeout=30) == b"after the crowd"
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % metrics, timeout=30) as page:
        assert b"gaspar2_dropped_messages" in page.read()
    no_abort(server)
