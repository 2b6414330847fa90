"""A Producer embedded in programs that do not run gevent: a Flask app under its threaded
server (the documentation's example, as written), and a plain threaded program; and what a program
that calls start(blocking=False) without running gevent is told."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import ROOT, alive, environment, wait_for

pytestmark = pytest.mark.timeout(120)


def descendants(pid):
    """Every process under ``pid``, from each process's parent in /proc (a thread's
    children are not listed under the process's main thread)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


def title(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def docs_flask_example():
    """The Flask app of docs/howto/embedding.rst, which includes it from this file."""
    with open(os.path.join(ROOT, "docs", "examples", "flask_app.py")) as f:
        return f.read()


def test_docs_flask_example_serves_as_written(tmp_path):
    pytest.importorskip("flask")
    with socket_port() as port:
        source = docs_flask_example().replace("app.run(threaded=True)",
                                                "app.run(threaded=True, port=%d)" % port)
    assert source.count("port=") == 1
    (tmp_path / "app.py").write_text(source)
    log = open(tmp_path / "log", "wb")     # noqa: SIM115 (closed below)
    app = subprocess.Popen([sys.executable, "app.py"], cwd=tmp_path, stdout=log,
                           stderr=subprocess.STDOUT, env=environment())
    try:
        def get(name):
            url = "http://127.0.0.1:%d/thumb/%s" % (port, name)
            return urllib.request.urlopen(url, timeout=30).read()

        def up():
            assert app.poll() is None, (tmp_path / "log").read_text()
            try:
                return get("first") == b"thumbnail of first"
            except OSError:
                return False
        wait_for(up, timeout=60, interval=0.1, message="the Flask app serving")
        names = ["photo-%d-%s" % (n, "x" * n) for n in range(24)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(get, names))
        assert replies == [b"thumbnail of " + name.encode() for name in names]
        assert "gaspar2 producer" not in title(app.pid), "the host process keeps its name"
        family = descendants(app.pid)
        assert len(family) == 4, "a fork server, its generation and two workers: %r" % family
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)
        log.close()
    wait_for(lambda: not any(alive(pid) for pid in family), message="workers gone with the app")


class socket_port:
    """A free TCP port on 127.0.0.1."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


THREADED = """\
import concurrent.futures, logging, sys, threading, time
import gaspar2
from gaspar2 import client

logging.basicConfig(level=logging.INFO)
producer = gaspar2.Producer("tests.handlers:work", 0, processes=2)
if sys.argv[1] == "start_in_thread":
    producer.start_in_thread()
else:                                   # start() itself, in a thread of the program's own
    threading.Thread(target=producer.start, daemon=True).start()
    deadline = time.monotonic() + 60
    while not producer.addresses and time.monotonic() < deadline:
        time.sleep(0.01)
url = "%s:%d" % producer.address
bodies = [b"body %d " % n + bytes(range(n)) for n in range(64)]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    replies = list(pool.map(lambda body: client.request(url, body, timeout=30), bodies))
assert replies == bodies, "each reply is its own request's"
stopper = threading.Thread(target=producer.stop)    # from yet another thread
stopper.start()
stopper.join(60)
assert producer.state.value == "stopped", producer.state
try:
    client.request(url, b"after", timeout=5)
except client.RequestRefused:
    print("served 64, stopped, refused after")
"""


@pytest.mark.parametrize("how", ["start_in_thread", "start"])
def test_a_plain_threaded_program_embeds_a_producer(tmp_path, how):
    (tmp_path / "threaded.py").write_text(THREADED)
    done = subprocess.run([sys.executable, "threaded.py", how], cwd=tmp_path,
                          capture_output=True, env=environment(), timeout=90)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"served 64, stopped, refused after\n"
    assert b"LoopExit" not in done.stderr


NOT_GEVENT = """\
import logging, time
import gaspar2
logging.basicConfig(level=logging.INFO)
producer = gaspar2.Producer("tests.handlers:work", 0, processes=1)
producer.start(blocking=False)
print("started", flush=True)
time.sleep(60)          # a program that never runs gevent
"""


def test_start_without_running_gevent_is_told_what_to_do(tmp_path):
    (tmp_path / "blocked.py").write_text(NOT_GEVENT)
    log = tmp_path / "log"
    with open(log, "wb") as out:
        program = subprocess.Popen([sys.executable, "blocked.py"], cwd=tmp_path, stdout=out,
                                   stderr=subprocess.STDOUT, env=environment())
    try:
        wait_for(lambda: b"call start_in_thread() instead" in log.read_bytes(), timeout=60,
                 interval=0.1, message="the error")
        assert b"ERROR:gaspar2:nothing is served" in log.read_bytes()
    finally:
        program.kill()
        program.wait(30)
