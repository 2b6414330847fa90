"""What operators read: JSON log lines, log files that follow logrotate, the access log's
outcome for a client gone before its reply, the health endpoint, the request command on a
terminal. All against real servers."""

import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from gaspar2 import client

from conftest import ROOT, Server, connect, environment, wait_for

pytestmark = pytest.mark.timeout(120)


def frame(payload):
    return struct.pack("!I", len(payload)) + payload


def json_lines(text):
    entries = [json.loads(line) for line in text.splitlines()]     # every line parses
    for entry in entries:
        assert {"time", "level", "logger", "message", "pid"} <= set(entry), entry
    return entries


def test_json_logs_are_one_object_per_line(serve):
    server = serve("tests.handlers:work", "-w", "1", "--log-format", "json", "--access-log")
    assert client.request(server.url, b"hello", timeout=30) == b"hello"
    with pytest.raises(client.RequestFailed):
        client.request(server.url, b"fail", timeout=30)
    server.wait_log("handler_error")
    server.stop()
    entries = json_lines(server.log())
    access = [e for e in entries if e["logger"] == "gaspar2.access"]
    assert [(e["outcome"], e["bytes_in"], e["bytes_out"]) for e in access] == \
        [("ok", 5, 5), ("handler_error", 4, 0)]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", e["client"]) and e["worker"] == 1
               and e["ms"] >= 0 for e in access)
    (failure,) = [e for e in entries if "handler failed" in e["message"]]
    assert "RuntimeError: asked to fail" in failure["traceback"]
    assert failure["level"] == "warning" and "\n" not in failure["message"]
    assert any(e["message"].startswith("gaspar2 serving tests.handlers:work on") for e in entries)


def test_json_logs_of_a_worker_that_cannot_start(tmp_path):
    server = Server("tests.handlers:BrokenSetup", ["-w", "2", "--log-format", "json"],
                    tmp_path / "log")
    assert server.wait_exit() == 3
    entries = json_lines(server.log())
    (failed,) = [e for e in entries if "traceback" in e]
    assert failed["message"].endswith("importing the app or its setup() failed, exiting")
    assert failed["traceback"].rstrip().endswith("RuntimeError: cannot open the model file")
    server.stop()


def test_log_files_follow_logrotate_and_sigusr1(tmp_path):
    errors, access = tmp_path / "error.log", tmp_path / "access.log"
    server = Server("tests.handlers:log_line", ["-w", "1", "--error-logfile", str(errors),
                                                "--access-logfile", str(access)],
                    tmp_path / "output")
    server.log_path = errors
    try:
        wait_for(lambda: errors.exists() or server.proc.poll() is not None, message="the log")
        server.wait_serving()
        assert client.request(server.url, b"one", timeout=30) == b"one"
        wait_for(lambda: "ok in=3" in access.read_text(), message="the first access line")
        os.rename(errors, str(errors) + ".1")
        os.rename(access, str(access) + ".1")
        # The worker notices its file moved; the producer waits for SIGUSR1.
        assert client.request(server.url, b"two", timeout=30) == b"two"
        wait_for(lambda: errors.exists() and "handler says two" in errors.read_text(),
                 message="the worker's line in the new file")
        moved = tmp_path / "access.log.1"      # the producer writes there until SIGUSR1
        wait_for(lambda: moved.read_text().count("ok in=3") == 2,
                 message="the second access line, in the moved file")
        server.signal(signal.SIGUSR1)
        server.wait_log("SIGUSR1: reopened 2 log files")
        assert client.request(server.url, b"three", timeout=30) == b"three"
        wait_for(lambda: access.exists() and "ok in=5" in access.read_text(),
                 message="the access line in the new file")
        with open(str(access) + ".1") as f:
            old_access = f.read()
        assert old_access.count("ok in=3") == 2 and "in=5" not in old_access
        with open(str(errors) + ".1") as f:
            old_errors = f.read()
        assert "gaspar2 serving" in old_errors and "handler says one" in old_errors
        assert "handler says two" not in old_errors
        assert (tmp_path / "output").read_text() == ""     # nothing on stdout or stderr
    finally:
        server.stop()


def test_access_log_says_what_a_client_gone_before_its_reply_got(serve):
    server = serve("tests.handlers:work", "-w", "1", "--access-log")
    with connect(server) as sock:
        sock.sendall(frame(b"pid:0.3"))
        gone = sock.getsockname()[1]
    server.wait_log(r"127\.0\.0\.1:%d client_gone in=7 out=0" % gone)
    # A client that only half-closed gets its reply, and the access log says ok.
    with connect(server) as sock:
        sock.sendall(frame(b"pid:0.3"))
        sock.shutdown(socket.SHUT_WR)
        half = sock.getsockname()[1]
        reply = b"".join(iter(lambda: sock.recv(4096), b""))
    assert reply == str(server.worker_pids()[0]).encode()
    server.wait_log(r"127\.0\.0\.1:%d ok in=7 out=%d" % (half, len(reply)))
    assert not re.search(r"127\.0\.0\.1:%d ok" % gone, server.log())


def test_access_log_says_what_a_client_that_reset_or_spoke_out_of_turn_got(serve):
    server = serve("tests.handlers:work", "-w", "1", "--access-log")
    # Reads 1,000 bytes of a 900 KiB reply (the kernels hold the rest), then resets.
    with connect(server) as sock:
        sock.sendall(frame(b"big:921600"))
        got = 0
        while got < 1000:
            got += len(sock.recv(1000 - got))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset = sock.getsockname()[1]
    server.wait_log(r"127\.0\.0\.1:%d client_gone in=10 out=0" % reset)
    # Sends bytes after its frame, once the reply is in: it would see the reply, then a reset.
    with connect(server) as sock:
        sock.sendall(frame(b"pid"))
        reply = sock.recv(64)
        sock.sendall(b"more")
        late = sock.getsockname()[1]
    assert reply == str(server.worker_pids()[0]).encode()
    server.wait_log(r"127\.0\.0\.1:%d bad_frame in=3 out=0" % late)
    # A client that reads its reply and closes, as the protocol has it, is ok.
    assert client.request(server.url, b"big:921600", timeout=30) == b"x" * 921600
    server.wait_log(r"ok in=10 out=921600")
    assert not re.search(r"127\.0\.0\.1:(%d|%d) ok" % (reset, late), server.log())


def get(url):
    """(status, body) of a GET; None while nothing listens."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except urllib.error.URLError:
        return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_endpoint_answers_503_while_no_worker_is_ready(serve, tmp_path):
    gate = tmp_path / "gate"
    url = "http://127.0.0.1:%d/healthz" % free_port()
    server = serve("tests.handlers:GatedSetup", "-w", "1", "--metrics", url[7:-8], wait=False,
                   env=environment(GATE=str(gate)))
    status, body = wait_for(lambda: get(url), message="the health endpoint")
    assert status == 503 and body.endswith(b"\n") and body.count(b"\n") == 1
    counts = json.loads(body)
    assert counts["workers"] == 0 and counts["state"] == "starting"
    gate.touch()
    server.wait_serving()
    status, body = get(url)
    assert status == 200 and json.loads(body)["workers"] == 1
    assert json.loads(body)["state"] == "serving"
    # The only worker dies and its successor cannot get ready: 503 again.
    gate.unlink()
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: get(url)[0] == 503, message="503 once the worker is gone")
    gate.touch()
    wait_for(lambda: get(url)[0] == 200, message="200 once its successor is ready")
    assert get(url.replace("healthz", "metrics"))[0] == 200


def test_request_ends_with_a_newline_on_a_terminal(serve):
    server = serve("gaspar2.examples:echo", "-w", "1")
    controller, terminal = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "gaspar2", "request", server.url, "hello"],
                          stdout=terminal, stderr=subprocess.PIPE, cwd=ROOT, timeout=60)
    os.close(terminal)
    output = b""
    try:
        while True:
            chunk = os.read(controller, 1024)
            if not chunk:
                break
            output += chunk
    except OSError:
        pass            # EIO: the terminal's last writer is gone
    os.close(controller)
    assert done.returncode == 0 and output == b"hello\r\n"
    piped = subprocess.run([sys.executable, "-m", "gaspar2", "request", server.url, "hello"],
                           capture_output=True, cwd=ROOT, timeout=60)
    assert piped.stdout == b"hello"
