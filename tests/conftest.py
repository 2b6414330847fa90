"""Fixtures: real gaspar2 servers in subprocesses, and helpers to watch them."""

import collections
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from gaspar2 import client


def pytest_addoption(parser):
    parser.addoption("--heavy", action="store_true", help="run the full-size stress tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--heavy"):
        return
    skip = pytest.mark.skip(reason="full-size stress test: run with --heavy")
    for item in items:
        if "heavy" in item.keywords:
            item.add_marker(skip)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = re.compile(r"serving .* on (\S+):(\d+) with (\d+) workers?")


def wait_for(condition, timeout=30.0, interval=0.01, message="condition"):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, message))
        time.sleep(interval)


def children(pid):
    """Direct child pids of ``pid`` that are not zombies, read from /proc.

    The kernel's list of a thread's children is one small file, quick to read even in a
    test process whose other threads hold the GIL; the kernel does not promise it is
    complete while children come and go, so an empty list is checked against a scan of
    every process."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            found = [kid for kid in map(int, f.read().split()) if alive(kid)]
    except FileNotFoundError:
        found = []
    return found or scan_children(pid)


def scan_children(pid):
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Server:
    """A ``python -m gaspar2 serve`` subprocess, its log, and its process tree."""

    def __init__(self, target, args, log_path, env=None, cwd=ROOT, cmd=None, port="0",
                 prefix=(), **popen):
        """``cmd`` replaces the whole command; else ``port=None`` leaves the addresses to
        ``args``, and ``prefix`` runs the server under another command (which must exec it
        or keep its pid). ``popen`` goes to Popen."""
        self.log_path = log_path
        self.log_file = open(log_path, "wb")    # noqa: SIM115 (closed by stop)
        if cmd is None:
            cmd = [*prefix, sys.executable, "-m", "gaspar2", "serve", target, *args]
            cmd += ["--port", port] if port is not None else []
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     cwd=cwd, env=env, **popen)
        self.pid = self.proc.pid

    def wait_serving(self, timeout=60):
        def serving():
            if self.proc.poll() is not None:
                raise AssertionError("server exited with %s:\n%s"
                                     % (self.proc.returncode, self.log()))
            return SERVING.search(self.log())
        match = wait_for(serving, timeout, message="the serving line")
        self.host, self.port = match.group(1), int(match.group(2))
        self.workers = int(match.group(3))
        self.url = "%s:%d" % (self.host, self.port)
        return self

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=30):
        """Wait until the log matches ``pattern``; return the whole log."""
        wait_for(lambda: re.search(pattern, self.log()), timeout, message=repr(pattern))
        return self.log()

    def forkserver(self):
        kids = children(self.pid)
        assert len(kids) == 1, "expected one fork server, found %r" % kids
        return kids[0]

    def preloaders(self):
        """The fork server's children: each holds one generation's code and forks its
        workers."""
        return sorted(children(self.forkserver()))

    def worker_pids(self):
        return sorted(w for preloader in self.preloaders() for w in children(preloader))

    def wait_workers(self, count, exclude=(), timeout=30):
        """Wait until ``count`` workers run, none of them in ``exclude``; return their pids."""
        def ready():
            pids = self.worker_pids()
            return pids if len(pids) == count and not set(pids) & set(exclude) else None
        return wait_for(ready, timeout, message="%d workers" % count)

    def descendants(self):
        found, todo = [], [self.pid]
        while todo:
            for kid in children(todo.pop()):
                found.append(kid)
                todo.append(kid)
        return found

    def signal(self, sig):
        os.kill(self.pid, sig)

    def status(self):
        """Ask the producer for its counters (SIGUSR2) and parse the line it logs."""
        before = self.log().count("status:")
        self.signal(signal.SIGUSR2)

        def whole_line():       # the log may be read while the line is half written
            log = self.log()
            rest = log.split("status:")[-1]
            return log.count("status:") > before and "\n" in rest and rest.split("\n", 1)[0]

        line = wait_for(whole_line, message="a status line")
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}

    def memory(self, field="VmRSS"):
        """The producer's resident memory (or VmHWM, its peak), in bytes."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no %s" % field)

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError("server did not exit in %s s:\n%s"
                                 % (timeout, self.log())) from exc

    def stop(self):
        """SIGTERM, and make sure nothing of the server is left."""
        if self.proc.poll() is None:
            tree = self.descendants()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            wait_for(lambda: not any(alive(p) for p in tree), 10, message="no orphans")
        self.log_file.close()


@pytest.fixture
def serve(tmp_path):
    """Factory: ``serve("module:attr", "--workers", "2")`` -> a serving Server."""
    servers = []

    def start(target, *args, wait=True, env=None, **kwargs):
        server = Server(target, args, tmp_path / ("server%d.log" % len(servers)), env=env,
                        **kwargs)
        servers.append(server)
        return server.wait_serving() if wait else server

    yield start
    for server in servers:
        server.stop()


def module_server(tmp_path_factory, target, *args):
    """A serving Server for a module-scoped fixture, its log in a directory of its own."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    return Server(target, args, log).wait_serving()


def connect(server):
    return socket.create_connection((server.host, server.port), timeout=30)


def exchange(server, data, shut_wr=False):
    """Send raw bytes; return ("ok", reply) or ("reset", partial reply)."""
    with connect(server) as sock:
        sock.sendall(data)
        if shut_wr:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return "ok", b"".join(chunks)
                chunks.append(chunk)
        except ConnectionResetError:
            return "reset", b"".join(chunks)


class Load:
    """Threads sending requests back to back until ``stop()``: counts each outcome ("ok",
    "wrong", "reset" or "failed: ...") and keeps the slowest request's time."""

    def __init__(self, url, concurrency, payload_for=lambda rng: b"x", expect=None):
        self.url, self.payload_for = url, payload_for
        self.expect = expect or (lambda payload: payload)
        self.outcomes = collections.Counter()
        self.worst = 0.0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(concurrency)]
        for thread in self.threads:
            thread.start()

    def _run(self, n):
        rng = random.Random(n)
        while not self.stopping.is_set():
            payload = self.payload_for(rng)
            began = time.monotonic()
            try:
                reply = client.request(self.url, payload, timeout=60)
                outcome = "ok" if reply == self.expect(payload) else "wrong"
            except client.RequestReset:
                outcome = "reset"
            except client.RequestFailed as exc:
                outcome = "failed: %s" % exc
            with self.lock:
                self.outcomes[outcome] += 1
                self.worst = max(self.worst, time.monotonic() - began)

    def count(self, outcome="ok"):
        with self.lock:
            return self.outcomes[outcome]

    def stop(self):
        self.stopping.set()
        for thread in self.threads:
            thread.join(90)
            assert not thread.is_alive(), "a request hung"
        return self.outcomes


def environment(**extra):
    """This process's environment for a server, without GASPAR2_CMD_ARGS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "GASPAR2_CMD_ARGS"}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


# Moves fd argv[1] to argv[2], sets LISTEN_PID to its own pid when argv[3] says "self",
# and execs the rest: systemd's part in socket activation.
ACTIVATE = """import os, sys
source, target, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.dup2(source, target)
os.environ["LISTEN_PID"] = str(os.getpid()) if pid == "self" else pid
os.execv(sys.argv[4], sys.argv[4:])
"""


def start_activated(tmp_path, sock, target_fd, listen_pid, target, args, env, cwd=ROOT):
    """A server started as systemd starts one: ``sock`` as fd ``target_fd``, LISTEN_PID
    ``"self"`` (its own pid) or another; LISTEN_FDS comes with ``env``."""
    prefix = [sys.executable, "-c", ACTIVATE, str(sock.fileno()), str(target_fd), listen_pid]
    return Server(target, args, tmp_path / "log", env=env, prefix=prefix, port=None, cwd=cwd,
                  pass_fds=[sock.fileno()])
