"""What a crowd, a careless operator or another local user can do to the ports a producer
exposes: /healthz stays prompt under idle, slow and garbage connections on the metrics port;
a request header trickled in a byte at a time meets a total deadline; the log lines they
cause are throttled and their bytes escaped; an abstract unix socket admits only whom its
mode admits; secret keys are private, and refused when they are not."""

import multiprocessing
import os
import re
import resource
import secrets
import selectors
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from gaspar2 import client

from conftest import ROOT, Server, wait_for
from test_remote import free_port

pytestmark = pytest.mark.timeout(120)
FILES = 1024            # so the metrics port holds 64 connections: a crowd of 330 overflows it
READ_TIMEOUT = 0.5      # both ports' total deadline for a request, in these tests
SLOW_EVERY = 0.1        # a slow client's pace: one header byte this often


def limit_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One producer for the module: a TCP port, an abstract socket only its own user may
    use, and a metrics port; a low file limit, short read deadlines."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    name = "gaspar2-crowds-%s" % secrets.token_hex(4)
    metrics = free_port()
    server = Server("tests.handlers:work", [
        "-b", "127.0.0.1:0", "-b", "unix:@" + name, "--unix-socket-mode", "600",
        "--workers", "1", "--metrics", "127.0.0.1:%d" % metrics,
        "--metrics-read-timeout", str(READ_TIMEOUT), "--read-timeout", str(READ_TIMEOUT)],
        tmp_path_factory.mktemp("crowds") / "server.log", port=None, preexec_fn=limit_files)
    try:
        server.wait_serving()
        server.metrics = ("127.0.0.1", metrics)
        server.abstract = "unix:@" + name
        yield server
    finally:
        server.stop()


class Crowd:
    """Clients that connect and send nothing (``idle``), one header byte every SLOW_EVERY
    (``slow``) or ``garbage`` with the handshake; each connects again as soon as it is
    dropped, while ``again``. ``dropped`` counts the connections the server closed."""

    def __init__(self, address, idle=0, slow=0, garbage=b"", again=True):
        self.address, self.again, self.garbage = address, again, garbage
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.dropped = 0
        self.replies = []
        self.slow = {}
        for kind, count in (("idle", idle), ("slow", slow)):
            for _ in range(count):
                self._open(kind)
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _open(self, kind):
        sock = socket.socket()
        if self.garbage:
            sock.connect(self.address)
            sock.sendall(self.garbage)
            sock.setblocking(False)
        else:
            sock.setblocking(False)
            sock.connect_ex(self.address)
        self.selector.register(sock, selectors.EVENT_READ, kind)
        if kind == "slow":
            self.slow[sock] = 0.0

    def _run(self):
        while not self.stop.is_set():
            now = time.monotonic()
            for sock, last in list(self.slow.items()):
                if now - last >= SLOW_EVERY:
                    self.slow[sock] = now
                    try:
                        sock.send(b"G")
                    except OSError:
                        pass
            for key, _ in self.selector.select(0.02):
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    self.replies.append(data)
                    continue
                self.selector.unregister(key.fileobj)
                self.slow.pop(key.fileobj, None)
                key.fileobj.close()
                self.dropped += 1
                if self.again:
                    self._open(key.data)

    def leave(self):
        self.stop.set()
        self.thread.join()
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


class CrowdProcess:
    """A Crowd in a process of its own, as attackers are: the probes made here do not wait
    for the interpreter's lock behind the crowd's thread."""

    def __init__(self, address, idle, slow):
        context = multiprocessing.get_context("fork")
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(target=self._run, args=(theirs, address, idle, slow))
        self.process.start()
        assert self.pipe.recv() == "ready"

    @staticmethod
    def _run(pipe, address, idle, slow):
        crowd = Crowd(address, idle=idle, slow=slow)
        pipe.send("ready")
        while pipe.recv() == "dropped":
            pipe.send(crowd.dropped)
        crowd.leave()
        pipe.send(crowd.dropped)

    @property
    def dropped(self):
        self.pipe.send("dropped")
        return self.pipe.recv()

    def leave(self):
        self.pipe.send("leave")
        self.pipe.recv()
        self.process.join()


def probe(address, path="/healthz", timeout=1.0):
    """(status, seconds) of one GET, as a health checker makes it."""
    started = time.perf_counter()
    with urllib.request.urlopen("http://%s:%d%s" % (*address, path), timeout=timeout) as page:
        page.read()
        return page.status, time.perf_counter() - started


class NormalClient:
    """Echo requests on the main port, one after another, for as long as it runs."""

    def __init__(self, url):
        self.url, self.latencies, self.failures = url, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                assert client.request(self.url, b"hello", timeout=10) == b"hello"
                self.latencies.append(time.perf_counter() - started)
            except Exception as exc:
                self.failures.append(exc)

    def finish(self):
        self.stop.set()
        self.thread.join()
        assert not self.failures, self.failures[:3]
        assert self.latencies and max(self.latencies) < 2.0, max(self.latencies)


def probes_under_a_crowd(server, idle, slow, count):
    """Probe /healthz ``count`` times while ``idle`` and ``slow`` clients, reconnecting
    whenever dropped, crowd the metrics port, and a normal client uses the main port; the
    probes' latencies. Half the probes come first, the rest once the crowd has been
    dropped (and come back) more than ``idle + slow`` times; it still is after them."""
    crowd = CrowdProcess(server.metrics, idle, slow)     # in the listen queue already
    normal = NormalClient(server.url)
    try:
        latencies = []
        for half in range(2):
            for _ in range(count // 2):
                status, seconds = probe(server.metrics)
                assert status == 200
                latencies.append(seconds)
            if half == 0:
                wait_for(lambda: crowd.dropped > idle + slow, 30, message="the crowd churning")
                dropped = crowd.dropped
        wait_for(lambda: crowd.dropped > dropped + 50, 10, message="the crowd churning still")
    finally:
        crowd.leave()
        normal.finish()
    print("healthz under %d idle and %d slow: max %.1f ms"
          % (idle, slow, 1000 * max(latencies)))
    return latencies


def test_healthz_answers_promptly_while_crowds_hold_the_metrics_port(server):
    """300 idle and 30 slow clients on a port that holds 16: every probe is answered 200,
    promptly, and the main port's client is served."""
    latencies = probes_under_a_crowd(server, 300, 30, count=10)
    assert max(latencies) < 0.5, latencies


@pytest.mark.heavy
def test_healthz_answers_within_100ms_under_1000_idle_and_100_slow(tmp_path):
    """The full-size figure, with the default file limit (the port holds 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
    metrics = free_port()
    server = Server("tests.handlers:work", ["--workers", "2", "--metrics",
                                            "127.0.0.1:%d" % metrics], tmp_path / "server.log")
    try:
        server.wait_serving()
        server.metrics = ("127.0.0.1", metrics)
        latencies = probes_under_a_crowd(server, 1000, 100, count=100)
    finally:
        server.stop()
    assert max(latencies) < 0.1, sorted(latencies)[-5:]


def test_a_header_trickled_in_meets_a_total_deadline(server):
    """Bytes that keep coming do not renew the deadline: each slow client is dropped once
    READ_TIMEOUT has passed since it connected, while its bytes still flow."""
    crowd = Crowd(server.metrics, slow=4, again=False)
    started = time.monotonic()
    try:
        wait_for(lambda: crowd.dropped == 4, 10 * READ_TIMEOUT, message="the slow ones dropped")
        elapsed = time.monotonic() - started
    finally:
        crowd.leave()
    assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 1.5, elapsed
    assert probe(server.metrics)[0] == 200


def test_lines_a_crowd_can_cause_are_throttled_and_escaped(server):
    """Garbage and oversized headers on the metrics port, a slowloris on the main one:
    a few lines for hundreds of causes, the attacker's bytes escaped, no traceback."""
    before = server.log()
    garbage = b"\x1b[31mEVIL\x00 \xff\r\nX: y\r\n\r\n"
    crowds = [Crowd(server.metrics, idle=150, garbage=garbage, again=False),
              Crowd(server.metrics, idle=50, again=False,
                    garbage=b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"),
              Crowd((server.host, server.port), idle=200, again=False)]
    try:
        wait_for(lambda: [crowd.dropped for crowd in crowds] == [150, 50, 200], 20,
                 message="every attacker answered or dropped")
    finally:
        for crowd in crowds:
            crowd.leave()
    assert crowds[0].replies and crowds[1].replies
    assert all(reply.startswith(b"HTTP/1.1 400 ") for reply in crowds[0].replies)
    assert all(reply.startswith(b"HTTP/1.1 431 ") for reply in crowds[1].replies)
    log = server.log()[len(before):]
    assert "\x1b" not in log and "\\x1b[31mEVIL\\x00 \\xff\\r\\nX" in log
    assert "Traceback" not in log
    refused = [line for line in log.splitlines() if "metrics port:" in line]
    timeouts = [line for line in log.splitlines() if "(read_timeout)" in line]
    assert 1 <= len(refused) <= 12 and 1 <= len(timeouts) <= 6, (refused, timeouts)
    assert client.request(server.url, b"after", timeout=10) == b"after"


def as_user(uid, function):
    """Run ``function`` in a child process with this user and group id and no other group;
    its result, as bytes."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, function())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def request_abstract(name):
    """One request over the abstract socket ``name``: b"reply:..." or b"failed:..."."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect("\0" + name)
            sock.sendall(struct.pack("!I", 5) + b"hello")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        return b"reply:" + data if data == b"hello" else b"failed:" + data
    except OSError as exc:
        return b"failed:" + repr(exc).encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_an_abstract_socket_admits_only_whom_its_mode_admits(server):
    """--unix-socket-mode 600 on unix:@NAME: its own user is served, another is not."""
    name = server.abstract[len("unix:@"):]
    assert client.request(server.abstract, b"hello", timeout=10) == b"hello"
    assert as_user(65534, lambda: request_abstract(name)).startswith(b"failed:")
    server.wait_log(r"unix:@%s: refused a peer with uid 65534: --unix-socket-mode 600"
                    % re.escape(name))
    assert as_user(0, lambda: request_abstract(name)) == b"reply:hello"


def test_secret_keys_are_private_and_refused_when_not(tmp_path):
    """``gaspar2 keys`` writes the secret key 0600; a secret key its group may read is
    refused by the producer and by ``gaspar2 worker``, naming the file and the fix."""
    gaspar2 = [sys.executable, "-m", "gaspar2"]
    subprocess.run([*gaspar2, "keys", str(tmp_path), "k"], check=True, capture_output=True,
                   preexec_fn=lambda: os.umask(0o022))
    secret = str(tmp_path / "k.key_secret")
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    os.chmod(secret, 0o640)
    fix = "chmod 600 %s" % secret
    served = subprocess.run([*gaspar2, "serve", "tests.handlers:work", "-w", "1", "--port", "0",
                             "--remote-workers", "tcp://127.0.0.1:%d" % free_port(),
                             "--curve-secret-key", secret,
                             "--curve-authorized", str(tmp_path / "k.key")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    joined = subprocess.run([*gaspar2, "worker", "tests.handlers:work", "--connect",
                             "tcp://127.0.0.1:%d" % free_port(), "--curve-secret-key", secret,
                             "--curve-server-key", str(tmp_path / "k.key")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    for done in (served, joined):
        assert done.returncode == 1, done.stderr
        assert "mode 0640" in done.stderr and fix in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
