"""Two producers behind HAProxy in TCP mode: one stops gracefully under load, nothing fails."""

import collections
import shutil
import signal
import socket
import subprocess
import threading

import pytest

from gaspar2 import client

from conftest import wait_for

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(shutil.which("haproxy") is None,
                                 reason="haproxy is not installed (.ci/run installs Debian's)")]

CONFIG = """
defaults
    mode tcp
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend gaspar2
    bind 127.0.0.1:{port}
    default_backend producers
backend producers
    balance roundrobin
    server one 127.0.0.1:{one} check inter 200ms fall 1 rise 2
    server two 127.0.0.1:{two} check inter 200ms fall 1 rise 2
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def haproxy(tmp_path):
    procs = []

    def start(one, two):
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(CONFIG.format(port=port, one=one, two=two))
        with open(tmp_path / "haproxy.log", "wb") as log:     # haproxy has its own copy
            procs.append(subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=log,
                                          stderr=subprocess.STDOUT))
        url = "127.0.0.1:%d" % port
        wait_for(lambda: _answers(url), message="haproxy up")
        return url

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _answers(url):
    try:
        return client.request(url, b"ping", timeout=5) == b"ping"
    except client.RequestFailed:
        return False


def test_one_producer_stops_under_load_without_a_failed_request(serve, haproxy):
    one = serve("tests.handlers:work", "--workers", "1")
    two = serve("tests.handlers:work", "--workers", "1")
    url = haproxy(one.port, two.port)
    pids = {"one": set(one.worker_pids()), "two": set(two.worker_pids())}
    stop = threading.Event()
    served = collections.Counter()
    failures = []

    def load():
        while not stop.is_set():
            try:
                reply = client.request(url, b"pid:0.005", timeout=30)
            except client.RequestFailed as exc:
                failures.append(str(exc))
                continue
            if not reply.isdigit():     # behind HAProxy, a reset reaches us as an empty reply
                failures.append("a reply of %r" % reply)
                continue
            served["one" if int(reply) in pids["one"] else "two"] += 1

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: served["one"] > 50 and served["two"] > 50, message="both producers serving")
    one.signal(signal.SIGTERM)
    assert one.wait_exit() == 0
    after = served["two"]
    wait_for(lambda: served["two"] > after + 200, message="the other producer takes the load")
    stop.set()
    for t in threads:
        t.join(60)
    assert failures == []
    print("haproxy: %r" % dict(served))
