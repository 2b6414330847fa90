"""Supervision under abuse: poison requests, signal storms, frozen workers, signals during
startup, producers sharing /tmp across PID namespaces, and start failures."""

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gaspar2 import client

from conftest import ROOT, Load, Server, alive, children, exchange, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def heavy(request):
    return request.config.getoption("--heavy")


def throughput(url, seconds, poison=None):
    """Requests answered per second by 8 normal clients, with one client sending ``poison``
    back to back beside them if given; and the normal clients' outcomes."""
    normal = Load(url, 8, lambda rng: b"n%d" % rng.randint(0, 10**6))
    bad = Load(url, 1, lambda rng: poison, expect=lambda p: None) if poison else None
    began = time.monotonic()
    wait_for(lambda: time.monotonic() - began >= seconds, seconds + 10, interval=0.05,
             message="the measured period")
    outcomes = normal.stop()
    return outcomes["ok"] / (time.monotonic() - began), outcomes, bad.stop() if bad else None


@pytest.mark.parametrize("poison", [b"sysexit", b"interrupt"])
def test_a_poison_request_fails_alone_and_the_pool_keeps_serving(serve, heavy, poison):
    server = serve("tests.handlers:work", "--workers", "2")
    seconds = 10 if heavy else 3
    alone, _, _ = throughput(server.url, seconds)
    pids = server.worker_pids()
    beside, outcomes, bad = throughput(server.url, seconds, poison)
    print("%s: %.0f req/s alone, %.0f beside the poison (%.0f%%); poison: %r"
          % (poison.decode(), alone, beside, 100 * beside / alone, dict(bad)))
    assert set(outcomes) == {"ok"}, outcomes
    assert beside >= 0.25 * alone, "the poison stalls the pool"
    assert set(bad) == {"reset"} and bad["reset"] > 10
    assert server.worker_pids() == pids, "no worker died of the poison"
    assert "killed" not in server.log() and "exited" not in server.log()


def test_a_reply_that_dies_with_its_worker_is_told_apart_from_the_request_it_ran(serve,
                                                                                 tmp_path):
    """A worker killed after it sent a reply that never reached the producer: that request
    and the one it was running both fail, each logged for what happened to it."""
    server = serve("tests.handlers:work", "--workers", "1", "--window", "2",
                   "--giveback-after", "60")
    worker, = server.wait_workers(1)
    gate, mark = tmp_path / "gate", tmp_path / "mark"
    size = 8 << 20          # far more than a unix socket buffers: most stays in the worker
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ran_first = pool.submit(exchange, server, client.pack(b"late:%s:%d" % (gate, size)))
        wait_for(gate.exists, message="the first request running")
        running = pool.submit(exchange, server, client.pack(b"mark:%s:300" % mark))
        wait_for(lambda: server.status()["at_workers"] == 2, message="both at the worker")
        server.signal(signal.SIGSTOP)       # its sink reads nothing: the reply stays behind
        try:
            gate.unlink()                   # the first returns; the worker sends its reply
            wait_for(mark.exists, message="the second request running")
            os.kill(worker, signal.SIGKILL)
        finally:
            server.signal(signal.SIGCONT)
        assert ran_first.result(timeout=60)[0] == "reset"
        assert running.result(timeout=60)[0] == "reset"
    log = server.wait_log("while running this request")
    assert len(re.findall(r"killed by SIGKILL after running this request, before its reply "
                          r"reached the producer", log)) == 1, log
    assert len(re.findall(r"killed by SIGKILL while running this request", log)) == 1, log
    server.wait_workers(1, exclude=[worker])
    assert exchange(server, client.pack(b"after"))[1] == b"after"


def test_a_request_that_kills_its_worker_costs_only_that_worker(serve):
    server = serve("tests.handlers:work", "--workers", "2")
    normal = Load(server.url, 8, lambda rng: b"n%d" % rng.randint(0, 10**6))
    for _ in range(10):
        with pytest.raises(client.RequestReset):
            client.request(server.url, b"exit", timeout=30)
    count = normal.count()
    wait_for(lambda: normal.count() > count + 50, message="the pool serving after the kills")
    outcomes = normal.stop()
    # A worker that dies takes with it the replies ZeroMQ had not yet written for it: those
    # requests fail (reset, logged), as the one that killed it does; no other does.
    log = server.log()
    assert set(outcomes) <= {"ok", "reset"}, outcomes
    assert log.count("exited with status 7 while running this request") >= 10
    assert len(re.findall("exited with status 7 (?:while|after) running this request", log)) \
        == 10 + outcomes["reset"]
    assert "next try in" not in log, "a worker that had served is replaced at once"
    server.wait_workers(2)


def generations(server):
    """pid -> generation of every worker that became ready, from the debug log."""
    found = re.findall(r"worker \d+ \(pid (\d+)\) ready \(generation (\d+)\)", server.log())
    return {int(pid): int(gen) for pid, gen in found}


def test_a_burst_of_reloads_converges_without_failing_a_request(serve):
    env = dict(os.environ, GASPAR2_SETUP_SECONDS="0.5")
    server = serve("tests.handlers:SlowStart", "--workers", "2", "--log-level", "debug", env=env)
    load = Load(server.url, 4)
    for _ in range(10):
        server.signal(signal.SIGHUP)
        time.sleep(0.1)             # the storm's own rhythm: ten HUPs 0.1 s apart

    def newest_only():
        pids = server.worker_pids()
        gens = generations(server)
        return len(pids) == 2 and all(gens.get(p) == 10 for p in pids) and pids
    final = wait_for(newest_only, timeout=15, interval=0.1, message="2 workers of generation 10")
    outcomes = load.stop()
    assert set(outcomes) == {"ok"}, outcomes
    assert outcomes["ok"] > 10
    assert sorted(server.worker_pids()) == sorted(final)
    assert "superseded by a reload before it was ready" in server.log()


def test_a_worker_frozen_between_requests_is_replaced(serve):
    server = serve("tests.handlers:work", "--workers", "2", "--worker-timeout", "2")
    load = Load(server.url, 4)
    wait_for(lambda: load.count() > 20, message="load running")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        fresh = server.wait_workers(2, exclude=[victim], timeout=10)
        replaced_in = time.monotonic() - stopped_at
    finally:
        if alive(victim):
            os.kill(victim, signal.SIGCONT)
    count = load.count()
    wait_for(lambda: load.count() > count + 20, message="load served by the new pool")
    outcomes = load.stop()
    print("frozen worker replaced in %.1f s; slowest request %.2f s" % (replaced_in, load.worst))
    assert replaced_in < 5
    assert load.worst < 5
    # Under load the stop may catch the worker inside a request, or with a reply that ZeroMQ
    # had not written yet: those fail with it, and only those.
    assert set(outcomes) <= {"ok", "reset"}, outcomes
    assert len(re.findall("killed by SIGKILL (?:while|after) running this request",
                          server.log())) == outcomes["reset"]
    assert victim not in fresh
    assert re.search(r"while idle: killing it|is stopped|\(worker_timeout 2\.0 s\): killing it",
                     server.log())


def test_a_worker_stopped_during_a_request_without_a_timeout_is_noticed(serve, tmp_path):
    server = serve("tests.handlers:work", "--workers", "2", "--heartbeat", "1")
    marker = tmp_path / "m"
    with pytest.raises(client.RequestReset), concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.request, server.url, b"mark:%s:3" % str(marker).encode(), 60)
        victim = int(wait_for(lambda: marker.exists() and marker.read_text()))
        os.kill(victim, signal.SIGSTOP)
        held.result()
    server.wait_log("is stopped and has held one request")
    server.wait_workers(2, exclude=[victim])


def test_term_while_the_workers_start_exits_0_and_leaves_nothing(tmp_path):
    env = dict(os.environ, GASPAR2_SETUP_SECONDS="2")
    server = Server("tests.handlers:SlowStart", ["--workers", "2"], tmp_path / "log", env=env)
    wait_for(lambda: len(server.descendants()) == 4,
             message="the fork server, a preloader and 2 workers")
    tree = server.descendants()
    ipc = ipc_dir_of(server.pid)
    began = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.wait_exit(timeout=10) == 0
    assert time.monotonic() - began < 10
    wait_for(lambda: not any(alive(p) for p in tree), 10, message="no process left")
    assert not os.path.exists(ipc)
    assert "SIGTERM while starting: stopping" in server.log()
    server.stop()


@pytest.mark.parametrize("name", ["HUP", "TTIN", "TTOU", "USR1"])
def test_other_signals_while_starting_take_no_default_action(tmp_path, name):
    env = dict(os.environ, GASPAR2_SETUP_SECONDS="0.5")
    server = Server("tests.handlers:SlowStart", ["--workers", "2"], tmp_path / "log", env=env)
    wait_for(lambda: len(server.descendants()) == 4,
             message="the fork server, a preloader and 2 workers")
    server.signal(getattr(signal, "SIG" + name))
    server.wait_serving()
    assert client.request(server.url, b"alive", timeout=30) == b"alive"
    expected = {"HUP": 2, "TTIN": 3, "TTOU": 1, "USR1": 2}[name]
    server.wait_workers(expected)
    server.stop()


def ipc_dir_of(pid):
    """The ipc directory a producer holds locked, from its open files."""
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if re.search(r"/gaspar2-\d+-[^/]+/lock$", target):
            return os.path.dirname(target)
    raise AssertionError("no locked ipc directory")


def test_a_producer_in_another_pid_namespace_leaves_the_ipc_directory_alone(serve, tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root for a PID namespace")
    probe = subprocess.run([unshare, "-p", "-f", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a PID namespace here: %s" % probe.stderr.decode().strip())
    first = serve("tests.handlers:work", "--workers", "2")
    ipc = ipc_dir_of(first.pid)
    cmd = [unshare, "-p", "-f", "--kill-child", sys.executable, "-m", "gaspar2", "serve",
           "tests.handlers:work", "--port", "0", "--workers", "1"]
    second = Server(None, [], tmp_path / "second.log", cmd=cmd)
    try:
        second.wait_serving()
        assert os.path.isdir(ipc), "the other producer removed a live ipc directory"
        victim = first.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        first.wait_workers(2, exclude=[victim])
        replies = {client.request(first.url, b"pid", timeout=30) for _ in range(8)}
        assert len(replies) >= 1 and client.request(second.url, b"ok", timeout=30) == b"ok"
        assert "cannot start" not in first.log()
    finally:
        # The producer is the namespace's first process: stop it, not unshare(1).
        for inner in children(second.pid):
            os.kill(inner, signal.SIGTERM)
        second.wait_exit()
        second.stop()


def test_a_failed_start_leaves_nothing_and_the_ports_can_be_used_again(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent("""
        import socket, sys
        import gaspar2
        from tests.handlers import echo

        def free_port():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return s.getsockname()[1]

        port, metrics = free_port(), free_port()
        taken = socket.socket()
        taken.bind(("127.0.0.1", metrics))
        taken.listen()
        producer = gaspar2.Producer(echo, port, processes=1, metrics="127.0.0.1:%d" % metrics)
        try:
            producer.start(blocking=False)
        except OSError as exc:
            print("refused:", exc)
        assert producer.stopped.is_set()
        taken.close()
        again = gaspar2.Producer(echo, port, processes=1, metrics="127.0.0.1:%d" % metrics)
        again.start(blocking=False)
        print("served:", gaspar2.client.request("127.0.0.1:%d" % port, b"again", 30))
        again.stop()
        print("metrics port", metrics)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, cwd=ROOT,
                          timeout=90, env=dict(os.environ, PYTHONPATH=ROOT))
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    metrics = re.search(r"metrics port (\d+)", out).group(1)
    assert "refused: [Errno 98] cannot serve metrics on 127.0.0.1:%s" % metrics in out
    assert "served: b'again'" in out


def test_a_taken_port_is_named_in_the_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "gaspar2", "serve", "gaspar2.examples:echo",
                               "--port", str(port), "--workers", "1"], capture_output=True,
                              cwd=ROOT, timeout=60)
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:%d: Address already in use" % port in done.stderr.decode()


def test_a_reload_that_cannot_start_keeps_the_old_code_until_the_next_hup(serve, tmp_path):
    """A HUP onto broken code is logged once and given up; fixing the file changes nothing
    until the next HUP, which puts the fixed code into service."""
    app = tmp_path / "deployed.py"
    app.write_text("def handle(message):\n    return b'v1:' + message\n")
    server = serve("deployed:handle", "--workers", "2", cwd=tmp_path)
    assert client.request(server.url, b"a", timeout=30) == b"v1:a"
    old = server.worker_pids()
    for attempt in (1, 2):                          # the same mistake twice: told twice
        app.write_text("def handle(message)\n    return b'broken'\n")
        server.signal(signal.SIGHUP)
        log = server.wait_log(r"(?s)(reload failed.*){%d}" % attempt)
        assert log.count("SyntaxError") == attempt, "one traceback per failed reload"
    app.write_text("def handle(message):\n    return b'v2:' + message\n")
    # Nothing may start on its own now: over longer than the back-off's first five steps
    # (0.1 + 0.2 + 0.4 + 0.8 + 1.6 s), every reply still comes from the old code.
    until = time.monotonic() + 4
    while time.monotonic() < until:
        assert client.request(server.url, b"b", timeout=30) == b"v1:b"
    assert server.worker_pids() == old
    log = server.log()
    assert "next try in" not in log
    assert re.search(r"reload failed: worker \d+ \(pid \d+\) import or setup\(\) "
                     r"failed \(traceback "
                     r"above\); the 2 workers of the code before keep serving", log)
    server.signal(signal.SIGHUP)
    wait_for(lambda: client.request(server.url, b"c", timeout=30) == b"v2:c",
             message="the fixed code, after the HUP")
    server.wait_workers(2, exclude=old)
