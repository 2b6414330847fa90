"""What operators use: process titles, signals, metrics, the access log, the check command."""

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from gaspar2 import client

from conftest import ROOT, Server, alive, wait_for

pytestmark = pytest.mark.timeout(120)


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def test_process_titles(serve):
    server = serve("gaspar2.examples:echo", "--workers", "2")
    assert cmdline(server.pid) == "gaspar2 producer gaspar2.examples:echo %s" % server.url
    assert cmdline(server.forkserver()) == "gaspar2 forkserver gaspar2.examples:echo"
    assert [cmdline(pid) for pid in server.preloaders()] == [
        "gaspar2 generation 0 gaspar2.examples:echo"]
    titles = sorted(cmdline(pid) for pid in server.worker_pids())
    assert all(re.fullmatch(r"gaspar2 worker \d+ gaspar2\.examples:echo", t)
               for t in titles), titles


def test_ttin_adds_a_worker_and_ttou_removes_one_after_its_request(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2")
    first = server.worker_pids()
    server.signal(signal.SIGTTIN)
    three = server.wait_workers(3)
    assert set(first) < set(three)
    server.signal(signal.SIGTTOU)
    two = server.wait_workers(2)
    assert set(two) < set(three)
    # Both busy: the one that leaves finishes its request first.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = []
        for name in ("a", "b"):
            marker = tmp_path / name
            futures.append(pool.submit(client.request, server.url,
                                       b"mark:%s:1" % str(marker).encode(), 30))
            wait_for(marker.exists)
        server.signal(signal.SIGTTOU)
        server.wait_log("is one too many: it leaves")
        assert sorted(int(f.result()) for f in futures) == sorted(two)
    (last,) = server.wait_workers(1)
    assert last in two
    server.signal(signal.SIGTTOU)
    server.wait_log("keeping the last worker")
    assert client.request(server.url, b"pid", timeout=30) == str(last).encode()


def test_hup_reloads_code_without_failing_or_delaying_requests(tmp_path):
    module = tmp_path / "versioned.py"
    module.write_text("def handle(m):\n    return b'v1:' + m\n")
    server = Server("versioned:handle", ["--workers", "2"], tmp_path / "log", cwd=tmp_path)
    try:
        server.wait_serving()
        old = server.worker_pids()
        stop, replies, worst = threading.Event(), [], [0.0]

        def load():
            while not stop.is_set():
                began = time.monotonic()
                replies.append(client.request(server.url, b"x", timeout=30))
                worst[0] = max(worst[0], time.monotonic() - began)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: len(replies) > 50)
        module.write_text("def handle(m):\n    return b'v2:' + m\n")
        server.signal(signal.SIGHUP)
        new = server.wait_workers(2, exclude=old)
        count = len(replies)
        wait_for(lambda: len(replies) > count + 50)
        stop.set()
        for t in threads:
            t.join(30)
        assert set(replies) == {b"v1:x", b"v2:x"}
        assert replies[-1] == b"v2:x"
        assert worst[0] < 1.0, "a request was delayed %.2f s by the reload" % worst[0]
        assert not any(alive(p) for p in old) and len(new) == 2
        assert "while running this request" not in server.log()
    finally:
        server.stop()


def test_quit_stops_at_once(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "1", "--graceful-timeout", "60")
    marker = tmp_path / "m"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        stuck = pool.submit(client.request, server.url, b"mark:%s:60" % str(marker).encode(), 60)
        wait_for(marker.exists)
        began = time.monotonic()
        server.signal(signal.SIGQUIT)
        with pytest.raises(client.RequestFailed, match="reset"):
            stuck.result()
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 30


def gaspar2_check(*arguments):
    return subprocess.run([sys.executable, "-m", "gaspar2", "check", *arguments],
                          capture_output=True, cwd=ROOT, timeout=60)


def test_check_command():
    done = gaspar2_check("tests.handlers:Upper")
    assert done.returncode == 0 and b"imported and set up" in done.stdout
    done = gaspar2_check("tests.handlers:Upper", "--request", "quiet")
    assert done.returncode == 0 and done.stdout.endswith(b":QUIET")


@pytest.mark.parametrize("arguments, status, says", [
    (["tests.handlers:BrokenSetup"], 3,
     b"setup() raised RuntimeError: cannot open the model file"),
    (["tests.handlers:Uper"], 4, b"has no attribute 'Uper' (did you mean 'Upper'?)"),
    (["tests.no_such_module:x"], 4, b"no module named 'tests.no_such_module'"),
    (["tests.handlers:noarg"], 4, b"noarg cannot be called with one argument"),
    (["tests.handlers:returns_int", "--request", "x"], 1,
     b"failed the request: TypeError: handler returned int"),
    (["tests.handlers:work", "--request", "fail"], 1, b"RuntimeError: asked to fail"),
    (["no-colon"], 2, b"expected MODULE:ATTR"),
])
def test_check_reports_each_mistake_as_serve_does(arguments, status, says):
    """Each mistake: check's exit status and line are serve's; nothing is printed as a reply."""
    done = gaspar2_check(*arguments)
    assert (done.returncode, done.stdout) == (status, b""), done.stderr
    assert says in done.stderr
    if status == 4:
        assert b"Traceback" not in done.stderr
        served = subprocess.run([sys.executable, "-m", "gaspar2", "serve", arguments[0],
                                 "--bind", "127.0.0.1:0"], capture_output=True, cwd=ROOT,
                                timeout=60)
        assert served.returncode == 4 and says in served.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(gaspar2_[^\s]+) ([0-9.e+-]+)$", text, re.M)}


def test_metrics_and_access_log(serve):
    port = free_port()
    server = serve("tests.handlers:work", "--workers", "2", "--metrics", "127.0.0.1:%d" % port,
                   "--access-log")
    url = "http://127.0.0.1:%d/metrics" % port
    for _ in range(5):
        assert client.request(server.url, b"hello", timeout=30) == b"hello"
    with pytest.raises(client.RequestFailed):
        client.request(server.url, b"fail", timeout=30)
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(b"\xff\xff\xff\xff")
    victim = server.worker_pids()[0]
    server.signal(signal.SIGTTIN)
    server.wait_workers(3)
    os.kill(victim, signal.SIGKILL)
    server.wait_workers(3, exclude=[victim])
    bad_frame = 'gaspar2_requests_total{outcome="bad_frame"}'

    def settled():
        # The replacement counts once its HELLO is in, which may trail the fork.
        m = scrape(url)
        return m if m.get(bad_frame) and m.get("gaspar2_workers") == 3 else None
    metrics = wait_for(settled, message="metrics with the bad frame and 3 live workers")
    assert metrics['gaspar2_requests_total{outcome="ok"}'] == 5
    assert metrics['gaspar2_requests_total{outcome="handler_error"}'] == 1
    assert metrics['gaspar2_request_seconds_count'] == 7
    assert metrics["gaspar2_received_bytes_total"] == 5 * 5 + 4
    assert metrics["gaspar2_sent_bytes_total"] == 25
    assert metrics['gaspar2_worker_exits_total{cause="signal"}'] == 1
    assert metrics["gaspar2_workers"] == 3
    assert metrics["gaspar2_requests_at_workers"] == 0
    log = server.log()
    assert len(re.findall(r"127\.0\.0\.1:\d+ ok in=5 out=5 [\d.]+ms worker=\d+", log)) == 5
    assert re.search(r"127\.0\.0\.1:\d+ handler_error in=4 out=0 [\d.]+ms worker=\d+", log)


def test_hup_sets_the_number_of_workers_the_config_file_gives(tmp_path):
    """Counting TTIN and TTOU is not the only way: HUP reads ``workers`` again."""
    conf = tmp_path / "gaspar2.conf.py"
    conf.write_text("workers = 1\n")
    server = Server("tests.handlers:work", ["-c", str(conf)], tmp_path / "log")
    try:
        server.wait_serving()
        (first,) = server.wait_workers(1)
        conf.write_text("workers = 3\n")
        server.signal(signal.SIGHUP)
        three = server.wait_workers(3, exclude=[first])
        assert "now 3 workers wanted" in server.log()
        conf.write_text("workers = 'many'\n")          # a mistake keeps the count, says why
        server.signal(signal.SIGHUP)
        server.wait_log("SIGHUP: cannot read the settings again, keeping the number of workers")
        assert len(server.wait_workers(3, exclude=three)) == 3
        conf.write_text("workers = 2\n")
        server.signal(signal.SIGHUP)
        wait_for(lambda: "now 2 workers wanted" in server.log(), message="2 wanted")
        server.wait_workers(2)
        assert client.request(server.url, b"still serving", timeout=30) == b"still serving"
    finally:
        server.stop()
