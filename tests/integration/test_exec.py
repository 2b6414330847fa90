"""``gaspar2 serve --exec``: workers whose handler is a program, against real servers, real
worker processes and real children (tests/exec_child.py, run without a shell): replies byte
for byte, a request failure that leaves the child serving, each fault failing only its
request, stderr in the log, fair dispatch beside a hung child, and no child outliving its
worker, its producer or a stop."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gaspar2 import client, settings
from gaspar2.protocol.wire import HEADER
from gaspar2.workers.command import ANSWER, PIPE_SIZE, READ_SIZE, Child, ProgramError

from conftest import ROOT, Server, alive, children, connect, wait_for

pytestmark = pytest.mark.timeout(120)

CHILD = os.path.join(ROOT, "tests", "exec_child.py")
LINE = "%s %s $WID" % (sys.executable, CHILD)
MAX = 2 * 2**20


def exec_server(log_path, line, *args, **kwargs):
    cmd = [sys.executable, "-m", "gaspar2", "serve", "--exec", line, *args, "--port", "0"]
    return Server(None, (), log_path, cmd=cmd, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Two workers; a request that runs a second is its worker's last. Remote workers may
    join on loopback (``server.remote``)."""
    log = tmp_path_factory.mktemp("exec") / "server.log"
    remote = "tcp://127.0.0.1:%d" % free_port()
    server = exec_server(log, LINE, "--workers", "2", "--max-message-size", "2MiB",
                         "--worker-timeout", "1", "--remote-workers", remote).wait_serving()
    server.remote = remote
    yield server
    server.stop()


def programs(server):
    """{worker pid: its child's pid} for every worker whose child runs."""
    found = {}
    for worker in server.worker_pids():
        kids = children(worker)
        if kids:
            found[worker] = kids[0]
    return found


def settled(server, count=2):
    """Wait until ``count`` workers each run a child; return programs(server)."""
    return wait_for(lambda: (lambda p: p if len(p) == count else None)(programs(server)),
                    message="%d workers with a child each" % count)


def request(server, message):
    return client.request(server.url, message, timeout=30)


def test_replies_are_the_childs_byte_for_byte_at_every_size(server):
    # Either side of an answer that fills one read of the child's stdout, and of a request
    # that fills its stdin pipe (the rest is written as the child reads), and the sizes
    # users send.
    one_read = READ_SIZE - ANSWER.size
    one_pipe = PIPE_SIZE - HEADER.size
    sizes = [0, 100, one_read - 1, one_read, one_read + 1,
             one_pipe - 1, one_pipe, one_pipe + 1, 2**20, MAX] * 2
    bodies = [os.urandom(size) for size in sizes]   # distinct: each reply is checked
    with ThreadPoolExecutor(4) as pool:             # against its own request
        replies = list(pool.map(lambda body: request(server, body), bodies))
    for body, reply in zip(bodies, replies, strict=True):
        assert len(reply) == len(body) and reply == body


def test_an_answer_in_pieces_is_read_whole_wherever_it_is_cut(server):
    """Cut inside the head, at its end and inside the body: each is read whole."""
    messages = [b"cut:%d:%s" % (cut, b"x" * cut) for cut in (1, 4, 5, 6, 40)]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda message: request(server, message), messages))
    assert replies == messages


@pytest.mark.parametrize("patched", [False, True], ids=["embedded", "embedded-patched"])
def test_an_embedded_producer_serves_through_a_command(tmp_path, patched):
    """``gaspar2.Producer(gaspar2.Command(line))`` in a gevent program, plain and under
    monkey patching: replies byte for byte at sizes either side of one read of the child's
    stdout, of the shared-memory threshold and of the child's stdin pipe, and a request
    failure."""
    cmd = [sys.executable, os.path.join(ROOT, "tests", "embedded_app.py"), "--exec", LINE,
           "--set", "max_message_size=2MiB"] + (["--patch"] if patched else [])
    embedded = Server(None, [], tmp_path / "embedded.log", env=dict(os.environ, PYTHONPATH=ROOT),
                      cmd=cmd).wait_serving()
    try:
        one_read, one_pipe = READ_SIZE - ANSWER.size, PIPE_SIZE - HEADER.size
        shm = settings.DEFAULTS["shm_threshold"]
        sizes = [0, 100, one_read, one_read + 1, shm - 1, shm, shm + 1,
                 one_pipe, one_pipe + 1, MAX] * 2
        bodies = [os.urandom(size) for size in sizes]
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda body: request(embedded, body), bodies))
        for body, reply in zip(bodies, replies, strict=True):
            assert len(reply) == len(body) and reply == body
        with pytest.raises(client.RequestReset):
            request(embedded, b"fail:embedded")
        embedded.wait_log(r"handler failed in worker \d+ \(pid \d+\):\nembedded")
        assert request(embedded, b"after") == b"after"
    finally:
        embedded.stop()


def test_a_request_the_program_fails_fails_alone_and_the_child_serves_on(server):
    before = settled(server)
    with pytest.raises(client.RequestReset):
        request(server, b"fail:no such picture 41")
    server.wait_log(r"handler failed in worker \d+ \(pid \d+\):\nno such picture 41")
    assert [request(server, b"after %d" % n) for n in range(4)] == \
        [b"after %d" % n for n in range(4)]
    assert programs(server) == before, "a failed request must not replace the child"
    assert "broke" not in server.log()


FAULTS = [
    (b"exit:3", r"its program exited with status 3"),
    (b"signal:SEGV", r"its program was killed by SIGSEGV"),
    (b"garbage", r"its program answered what is not an answer \(an answer starts with 0 or 1, "
                 r"not b'Hello'\): killed it"),
    (b"huge", r"its program answered what is not an answer \(an answer of 3221225472 bytes, "
              r"over max_reply_size 2097152\): killed it"),
    (b"close", r"its program closed its standard output: killed it"),
    (b"trailing", r"its program answered what is not an answer \(8 bytes after an answer\)"
                  r": killed it"),
]


def child_that(waits):
    """A real child, driven by its worker's own code; its answers are always waited for
    awake (yielding the CPU, however long they take and whatever else runs) or always
    asleep (``exchange(..., awake=False)``), or looked for awake in vain first, so that each
    test below runs every way, whatever the machine's load."""
    child = Child([sys.executable, CHILD, "7"], dict(os.environ), None, 7)
    child.awake_for = child.crowded_yield = 60.0
    if waits == "awake, then asleep":       # every look misses, then the worker sleeps
        child.awake_for = 0.0
    return child


WAITS = ["awake", "asleep", "awake, then asleep"]


@pytest.mark.parametrize("waits", WAITS)
def test_a_worker_reads_the_same_answers_awake_or_asleep(waits):
    child = child_that(waits)
    try:
        one_read = READ_SIZE - ANSWER.size
        sizes = (0, 100, one_read - 1, one_read, one_read + 1, 2**20)
        bodies = [os.urandom(size) for size in sizes]
        bodies += [b"cut:%d:%s" % (cut, b"y" * cut) for cut in (1, 4, 5, 6, 40)]
        awake = waits != "asleep"
        for body in bodies:
            kind, reply = child.exchange(body, MAX, awake)
            assert (kind, bytes(reply)) == (0, body)
        assert child.exchange(b"fail:no such picture", MAX, awake) == (1, b"no such picture")
        assert child.answered == len(bodies) + 1 and child.alive()
    finally:
        child.stop()


@pytest.mark.parametrize("waits", WAITS)
@pytest.mark.parametrize(("message", "reason"), FAULTS)
def test_a_broken_child_is_seen_awake_or_asleep(waits, message, reason):
    child = child_that(waits)
    try:
        with pytest.raises(ProgramError, match=reason) as raised:
            child.exchange(message, MAX, waits != "asleep")
        assert raised.value.broken and child.status is not None
    finally:
        child.stop()


def test_a_broken_child_fails_its_request_only_and_its_worker_starts_another(server):
    for message, reason in FAULTS:
        before = settled(server)
        with pytest.raises(client.RequestReset):
            request(server, message)
        server.wait_log(r"handler failed in worker \d+ \(pid \d+\):\n" + reason)
        server.wait_log(r"worker \d+: its program \(pid \d+\) broke \(%s\)" % reason)
        after = settled(server)
        assert after.keys() == before.keys(), "the workers live on"
        (gone,) = set(before.values()) - set(after.values())
        assert not alive(gone)
        body = b"still served after %s" % message
        assert request(server, body) == body


def test_each_child_knows_its_worker_by_environment_and_argument(server):
    workers = set(settled(server))
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: request(server, b"env"), range(16)))
    ids = {}
    for reply in replies:
        from_env, from_arg, worker = reply.split()
        assert from_env == from_arg and int(from_env) > 0
        assert int(worker) in workers
        assert ids.setdefault(int(worker), from_env) == from_env
    assert len(set(ids.values())) == len(ids), "one id per worker: %r" % ids


def test_stderr_goes_to_the_log_a_line_per_line_and_a_flood_stops_nothing(server):
    assert request(server, b"stderr:3") == b"3"
    log = server.wait_log(r"worker (\d+) stderr: line 2 of 3")
    worker = re.search(r"worker (\d+) stderr: line 0 of 3", log).group(1)
    assert re.search(r"worker %s stderr: line 1 of 3" % worker, log)
    assert request(server, b"flood:0.3") == b"flooded"      # 6 KB lines, non-stop
    server.wait_log(r"writes more than 1000 lines a second on stderr")
    assert request(server, b"after the flood") == b"after the flood"


def test_quick_requests_pass_a_hung_child_which_worker_timeout_kills(server, tmp_path):
    before = settled(server)
    mark, count = tmp_path / "spinning", tmp_path / "count"
    outcome = []

    def hang():
        try:
            outcome.append(request(server, b"spin:1.5:%s" % os.fsencode(mark)))
        except client.RequestReset:
            outcome.append("reset")
    spinner = threading.Thread(target=hang)
    spinner.start()
    wait_for(mark.exists, message="the child spinning")
    hung = int(mark.read_text())
    slowest = 0.0
    for n in range(20):
        began = time.monotonic()
        assert request(server, b"count:%s:q%d" % (os.fsencode(count), n)) == b"q%d" % n
        slowest = max(slowest, time.monotonic() - began)
    assert mark.exists() and alive(hung), "the quick ones passed while it spun"
    assert slowest < 0.5, slowest
    spinner.join(30)
    assert outcome == ["reset"]
    assert len(count.read_text().split()) == 20, "each request ran once"
    server.wait_log(r"has run one request for 1\.\d s \(worker_timeout 1\.0 s\): killing it")
    wait_for(lambda: not alive(hung), message="the hung child gone with its worker")
    after = settled(server)
    assert hung not in after.values() and len(set(after) & set(before)) == 1


def spin_in_background(server, mark):
    """A request that keeps its child busy (deaf to end of file on its stdin) for 30 s;
    returns the child's pid once it spins."""
    def run():
        try:
            request(server, b"spin:30:%s" % os.fsencode(mark))
        except client.RequestReset:
            pass
    threading.Thread(target=run, daemon=True).start()
    wait_for(mark.exists, message="the child spinning")
    return int(wait_for(mark.read_text, message="its pid"))


def test_a_child_dies_with_its_worker_killed_and_a_reload_starts_fresh_ones(server, tmp_path):
    settled(server)
    child = spin_in_background(server, tmp_path / "spinning")
    (worker,) = [w for w, c in programs(server).items() if c == child]
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: not alive(child), 5, message="the busy child of a SIGKILLed worker gone")
    replaced = settled(server)
    assert worker not in replaced
    server.signal(signal.SIGHUP)
    server.wait_workers(2, exclude=list(replaced))
    fresh = settled(server)
    assert not set(fresh.values()) & set(replaced.values())
    assert not any(alive(pid) for pid in replaced.values())
    assert request(server, b"after the reload") == b"after the reload"


def test_no_child_outlives_a_stop_or_a_killed_producer(tmp_path):
    stopped = exec_server(tmp_path / "stopped.log", LINE, "--workers", "1")
    killed = exec_server(tmp_path / "killed.log", LINE, "--workers", "1")
    for server in (stopped, killed):
        server.wait_serving()
        settled(server, 1)
    busy = spin_in_background(killed, tmp_path / "spinning")
    trees = {server: server.descendants() for server in (stopped, killed)}
    assert all(len(tree) == 4 for tree in trees.values()), trees   # fork server, generation,
    assert busy in trees[killed]                                    # worker, child
    stopped.signal(signal.SIGTERM)
    killed.signal(signal.SIGKILL)
    assert stopped.wait_exit() == 0 and killed.wait_exit() == -signal.SIGKILL
    for tree in trees.values():
        wait_for(lambda tree=tree: not any(alive(pid) for pid in tree), 5, message="no orphans")
    for server in (stopped, killed):
        server.stop()


def test_a_program_that_cannot_start_is_one_line_and_exit_4(tmp_path):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    runs = {line: subprocess.Popen([sys.executable, "-m", "gaspar2", "serve", "--exec", line],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
            for line in ("no-such-program-here --fast", "./not-executable")}
    expected = {"no-such-program-here --fast": "no program named 'no-such-program-here' on PATH",
                "./not-executable": "not an executable file: ./not-executable"}
    for line, proc in runs.items():
        out, err = proc.communicate(timeout=60)
        lines = err.decode().strip().splitlines()
        assert proc.returncode == 4 and out == b"", (line, err)
        assert len(lines) == 1 and lines[0].endswith(
            "cannot start %s: %s" % (line, expected[line])), lines


def test_a_program_that_dies_at_once_is_restarted_after_a_growing_back_off(tmp_path):
    server = exec_server(tmp_path / "log", "%s -c pass" % sys.executable, "--workers", "1")
    try:
        server.wait_serving()
        log = server.wait_log(r"the next starts in 0\.4 s")
        delays = re.findall(r"broke \(its program exited with status 0, while idle\) before "
                            r"answering anything: the next starts in (\d\.\d) s", log)
        assert delays[:3] == ["0.1", "0.2", "0.4"], log
    finally:
        server.stop()


def test_a_remote_worker_answers_through_its_child_byte_for_byte_at_every_size(tmp_path):
    """Bodies that reach a program over TCP, never through shared memory: the producer's
    only local worker spins through the whole sweep, so every reply is the remote one's."""
    remote = "tcp://127.0.0.1:%d" % free_port()
    server = exec_server(tmp_path / "server.log", LINE, "--workers", "1",
                         "--max-message-size", "2MiB", "--remote-workers", remote,
                         "--graceful-timeout", "1").wait_serving()
    spinning, group = tmp_path / "spinning", None
    try:
        with connect(server) as held:
            held.sendall(client.pack(b"spin:300:%s" % spinning))
            wait_for(spinning.exists, message="the local worker busy")
            with open(tmp_path / "group.log", "wb") as log:
                group = subprocess.Popen(
                    [sys.executable, "-m", "gaspar2", "worker", "--exec", LINE, "--connect",
                     remote, "--workers", "1", "--listen", "127.0.0.1"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
            one_read, one_pipe = READ_SIZE - ANSWER.size, PIPE_SIZE - HEADER.size
            sizes = [0, 100, one_read - 1, one_read, one_read + 1,
                     one_pipe - 1, one_pipe, one_pipe + 1, MAX] * 2
            bodies = [os.urandom(size) for size in sizes]
            with ThreadPoolExecutor(4) as pool:
                replies = list(pool.map(lambda body: request(server, body), bodies))
            for body, reply in zip(bodies, replies, strict=True):
                assert len(reply) == len(body) and reply == body
            held.setblocking(False)
            with pytest.raises(BlockingIOError):    # still spinning: it answered none
                held.recv(1)
    finally:
        if group is not None:
            group.terminate()
            group.wait(30)
        server.stop()


def test_a_remote_group_serves_through_children_of_its_own(server, tmp_path):
    with open(tmp_path / "group.log", "wb") as log:
        group = subprocess.Popen(
            [sys.executable, "-m", "gaspar2", "worker", "--exec", LINE, "--connect",
             server.remote, "--workers", "1", "--listen", "127.0.0.1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        def remote_reply():
            with ThreadPoolExecutor(6) as pool:
                for reply in pool.map(lambda _: request(server, b"env"), range(6)):
                    from_env, from_arg, parent = reply.split()
                    if int(from_env) >= 2**32:      # a remote worker's id
                        return from_env, from_arg, int(parent)
            return None
        from_env, from_arg, parent = wait_for(remote_reply, message="a remote worker's reply")
        assert from_env == from_arg
        (worker,) = children(group.pid)
        assert parent == worker
        (child,) = children(worker)
    finally:
        group.terminate()
        group.wait(30)
    wait_for(lambda: not alive(child), message="the remote child gone with its group")
