"""Remote workers over TCP with CURVE, on loopback: real producers, real worker groups."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from gaspar2 import client

from conftest import ROOT, Server, alive, children, wait_for

pytestmark = pytest.mark.timeout(120)
HEARTBEAT = "0.3"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    for directory, name in ((root, "producer"), (root / "workers", "w1"), (root / "workers", "w2"),
                              (root / "rogue", "r1")):
        subprocess.run([sys.executable, "-m", "gaspar2", "keys", str(directory), name],
                       check=True, capture_output=True)
    return root


class Group:
    """A ``gaspar2 worker --connect`` process group."""

    def __init__(self, endpoint, key, server_key, log_path, workers=2):
        self.log_path = log_path
        self.log_file = open(log_path, "wb")    # noqa: SIM115 (closed by stop)
        cmd = [sys.executable, "-m", "gaspar2", "worker", "tests.handlers:work",
               "--connect", endpoint, "--workers", str(workers), "--listen", "127.0.0.1",
               "--heartbeat", HEARTBEAT]
        if key is not None:
            cmd += ["--curve-secret-key", str(key), "--curve-server-key", str(server_key)]
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True)

    def pids(self):
        return children(self.proc.pid)

    def kill(self):
        tree = [self.proc.pid, *self.pids()]
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return tree

    def stop(self):
        if self.proc.poll() is None:
            tree = [self.proc.pid, *self.pids()]
            self.proc.terminate()
            self.proc.wait(30)
            wait_for(lambda: not any(alive(p) for p in tree), 10, message="group gone")
        self.log_file.close()


@pytest.fixture
def groups(tmp_path):
    started = []

    def start(*args, **kw):
        group = Group(*args, log_path=tmp_path / ("group%d.log" % len(started)), **kw)
        started.append(group)
        return group

    yield start
    for group in started:
        group.stop()


def serve_with_remote(serve, keys, port, *extra):
    return serve("tests.handlers:work", "--workers", "1", "--remote-workers",
                 "tcp://127.0.0.1:%d" % port,
                 "--curve-secret-key", str(keys / "producer.key_secret"),
                 "--curve-authorized", str(keys / "workers"), "--heartbeat", HEARTBEAT, *extra)


def pids_serving(server, count=12):
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        replies = pool.map(lambda _: client.request(server.url, b"pid:0.2", timeout=30),
                           range(count))
        return {int(r) for r in replies}


def test_remote_workers_share_the_load(serve, groups, keys):
    port = free_port()
    server = serve_with_remote(serve, keys, port)
    group = groups("tcp://127.0.0.1:%d" % port, keys / "workers" / "w1.key_secret",
                   keys / "producer.key")
    wait_for(lambda: len(server.log().split("joined from")) == 3, message="2 remote workers")
    remote = set(wait_for(lambda: len(group.pids()) == 2 and group.pids()))
    assert pids_serving(server) == remote | set(server.worker_pids())
    assert client.request(server.url, b"echo me", timeout=30) == b"echo me"


def test_killed_remote_group_fails_only_its_requests(serve, groups, keys, tmp_path):
    port = free_port()
    endpoint = "tcp://127.0.0.1:%d" % port
    server = serve_with_remote(serve, keys, port)
    group = groups(endpoint, keys / "workers" / "w1.key_secret", keys / "producer.key")
    wait_for(lambda: server.log().count("joined from") == 2)
    remote = set(wait_for(lambda: len(group.pids()) == 2 and group.pids()))
    (local,) = server.worker_pids()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(client.request, server.url, b"pid:4", 60) for _ in range(3)]
        wait_for(lambda: server.status()["at_workers"] == 3, message="3 requests running")
        killed_at = time.monotonic()
        group.kill()
        outcomes = []
        for f in concurrent.futures.as_completed(futures):
            try:
                outcomes.append(int(f.result()))
            except client.RequestFailed:
                outcomes.append(time.monotonic() - killed_at)
    # The two remote requests fail within the heartbeat timeout, before the local one ends.
    assert outcomes[2] == local
    assert max(outcomes[:2]) < 3 * float(HEARTBEAT) + 1.5
    assert server.wait_log("missed 3 heartbeats")
    assert pids_serving(server, 4) == {local}
    newcomer = groups(endpoint, keys / "workers" / "w1.key_secret", keys / "producer.key")
    fresh = set(wait_for(lambda: len(newcomer.pids()) == 2 and newcomer.pids()))
    wait_for(lambda: server.log().count("joined from") == 4)
    assert pids_serving(server) == fresh | {local}
    assert not fresh & remote


def test_unknown_keys_and_garbage_get_nothing(serve, groups, keys):
    port = free_port()
    server = serve_with_remote(serve, keys, port)
    rogue = groups("tcp://127.0.0.1:%d" % port, keys / "rogue" / "r1.key_secret",
                   keys / "producer.key")
    server.wait_log("refused a remote worker with an unknown CURVE key")
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(os.urandom(512))
    (local,) = server.worker_pids()
    assert pids_serving(server, 6) == {local}
    assert "joined from" not in server.log()
    assert server.status()["workers"] == 1
    assert rogue.proc.poll() is None


def test_remote_workers_rejoin_a_restarted_producer(serve, groups, keys):
    port = free_port()
    server = serve_with_remote(serve, keys, port)
    group = groups("tcp://127.0.0.1:%d" % port, keys / "workers" / "w1.key_secret",
                   keys / "producer.key")
    wait_for(lambda: server.log().count("joined from") == 2)
    server.stop()
    again = serve_with_remote(serve, keys, port)
    again.wait_log("joined from", timeout=30)
    wait_for(lambda: again.log().count("joined from") == 2)
    assert pids_serving(again) == set(group.pids()) | set(again.worker_pids())


def test_plain_remote_endpoint_off_loopback_is_refused(tmp_path):
    server = Server("tests.handlers:work", ["--workers", "1", "--remote-workers", "tcp://0.0.0.0:%d"
                                            % free_port()], tmp_path / "log")
    assert server.wait_exit() == 1
    assert "without CURVE keys" in server.log()
    server.stop()


def test_group_replaces_a_worker_that_lived_at_once_however_often(serve, groups, keys):
    # Back-off is for workers that die young; one that served a while is replaced at once,
    # even after many such deaths (the back-off starts over).
    port = free_port()
    serve_with_remote(serve, keys, port)
    group = groups("tcp://127.0.0.1:%d" % port, keys / "workers" / "w1.key_secret",
                   keys / "producer.key", workers=1)
    (pid,) = wait_for(lambda: len(group.pids()) == 1 and group.pids())
    waits = []
    for _ in range(8):
        born = time.monotonic()
        wait_for(lambda born=born: time.monotonic() - born > 1.2,
                 message="the worker past its first second")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        (pid,) = wait_for(lambda pid=pid: len(group.pids()) == 1 and pid not in group.pids()
                          and group.pids(), message="a replacement")
        waits.append(time.monotonic() - killed)
    assert max(waits) < 2.0, "replacements waited %s" % ["%.2f" % w for w in waits]
    assert "in 0.0 s" in group.log_path.read_text()
