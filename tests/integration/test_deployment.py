"""Deploying the way operators deploy gunicorn: settings from flags, the environment and a
config file; exit codes; unix sockets, socket activation and sd_notify; all against real
servers."""

import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys

import pytest

from gaspar2 import client

from conftest import ROOT, Server, environment, start_activated, wait_for

pytestmark = pytest.mark.timeout(120)


def gaspar2_cli(*args, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "gaspar2", *args], capture_output=True,
                          cwd=cwd, timeout=60, env=env)


def test_version():
    from gaspar2 import __version__
    done = gaspar2_cli("--version")
    assert (done.returncode, done.stdout.decode()) == (0, "gaspar2 %s\n" % __version__)


@pytest.mark.parametrize("args, says", [
    (["serve", "gaspar2.examples:echo", "--no-such-flag"], "unrecognized arguments"),
    (["serve", "gaspar2.examples:echo", "-b", "localhost"], "expected HOST:PORT"),
    (["serve", "gaspar2.examples"], "expected MODULE:ATTR"),
    (["serve", "gaspar2.examples:echo", "--timeout", "soon"], "invalid seconds value"),
    (["serve"], "MODULE:ATTR is required"),
])
def test_usage_errors_exit_2(args, says):
    done = gaspar2_cli(*args)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr.decode()


def test_config_file_and_environment_errors_exit_2(tmp_path):
    (tmp_path / "gaspar2.conf.py").write_text("workerz = 8\n")
    done = gaspar2_cli("serve", "gaspar2.examples:echo", cwd=tmp_path, env=environment())
    assert done.returncode == 2
    assert "'workerz' is not a setting (did you mean 'workers'?)" in done.stderr.decode()
    done = gaspar2_cli("serve", "gaspar2.examples:echo", "-c", "/no/such.conf.py")
    assert done.returncode == 2 and "cannot read the config file" in done.stderr.decode()
    done = gaspar2_cli("serve", "gaspar2.examples:echo",
                       env=environment(GASPAR2_CMD_ARGS="--workers many"))
    assert done.returncode == 2 and "GASPAR2_CMD_ARGS: error" in done.stderr.decode()


def serve_module(tmp_path, name, source, target):
    """Serve ``target`` from a module ``name`` written with ``source``: (exit code, stderr)."""
    (tmp_path / (name + ".py")).write_text(source)
    done = gaspar2_cli("serve", target, "--workers", "8", "--port", "0", cwd=tmp_path,
                       env=environment())
    return done.returncode, done.stderr.decode()


def test_app_that_cannot_be_found_exits_4_before_forking(tmp_path):
    code, err = serve_module(tmp_path, "myapp", "def start(message):\n    return message\n",
                             "myapp:stat")
    assert code == 4, err
    assert "cannot load myapp:stat: module 'myapp' has no attribute 'stat'" in err
    assert "(did you mean 'start'?)" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    done = gaspar2_cli("serve", "nothing_like_this:app", "--port", "0")
    assert done.returncode == 4 and len(done.stderr.splitlines()) == 1


def test_worker_that_cannot_boot_exits_3_with_one_traceback(tmp_path):
    server = Server("tests.handlers:BrokenSetup", ["--workers", "8"], tmp_path / "log")
    assert server.wait_exit() == 3
    log = server.log()
    assert log.count("Traceback (most recent call last)") == 1, log
    assert log.count("RuntimeError: cannot open the model file") == 1, log
    assert "StopNow" not in log and "During handling" not in log, log
    assert re.search(r"cannot serve tests\.handlers:BrokenSetup: worker \d+ .*setup\(\) failed",
                     log)
    assert len(log.splitlines()) < 20, log
    server.stop()


def test_app_whose_import_raises_exits_3_with_one_traceback(tmp_path):
    code, err = serve_module(tmp_path, "broken", "import json\nraise RuntimeError('no config')\n",
                             "broken:app")
    assert code == 3, err
    assert "cannot load broken:app: importing broken raised RuntimeError: no config" in err
    assert err.count("Traceback (most recent call last)") == 1, err


def print_config(*args, cwd=ROOT, env=None):
    done = gaspar2_cli("serve", *args, "--print-config", cwd=cwd, env=env or environment())
    assert done.returncode == 0, done.stderr
    values = {}
    exec(done.stdout.decode(), {}, values)     # the output is itself a config file
    return values


def test_precedence_flags_then_environment_then_config_file_then_defaults(tmp_path):
    conf = tmp_path / "site.conf.py"
    conf.write_text("import os\nbind = '0.0.0.0:9000'\nworkers = 3\ntimeout = 7\n"
                    "max_requests = 50\nmax_message_size = '1MiB'\n")
    env = environment(GASPAR2_CMD_ARGS="--workers 2 --timeout 5 -c %s" % conf)
    values = print_config("-w", "1", cwd=tmp_path, env=env)
    assert values["workers"] == 1                    # the command line
    assert values["timeout"] == 5.0                  # the environment
    assert values["worker_timeout"] == 5.0           # follows timeout
    assert values["max_requests"] == 50              # the config file
    assert values["max_message_size"] == 2**20
    assert values["bind"] == ["0.0.0.0:9000"]
    assert values["backlog"] == 2048                 # the default
    # --host/--port are one more --bind, in the source that gives them
    assert print_config("--port", "9001", cwd=tmp_path, env=env)["bind"] == ["127.0.0.1:9001"]
    # ./gaspar2.conf.py is read when present
    (tmp_path / "gaspar2.conf.py").write_text("workers = 4\n")
    assert print_config(cwd=tmp_path)["workers"] == 4
    assert print_config(cwd=tmp_path, env=environment(GASPAR2_CMD_ARGS="-w 6"))["workers"] == 6


def test_a_config_file_serves(tmp_path):
    (tmp_path / "gaspar2.conf.py").write_text(
        "bind = ['127.0.0.1:0', 'unix:%s']\nworkers = 3\n" % (tmp_path / "s.sock"))
    server = Server("tests.handlers:work", [], tmp_path / "log", cwd=tmp_path, port=None,
                    env=environment(GASPAR2_CMD_ARGS="--workers 2"))
    try:
        server.wait_serving()
        assert server.workers == 2
        assert client.request(server.url, b"hi", timeout=30) == b"hi"
        assert "listening on unix:%s" % (tmp_path / "s.sock") in server.log()
    finally:
        server.stop()


def unix_exchange(path, data):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return "ok", b"".join(chunks)
                chunks.append(chunk)
        except ConnectionResetError:
            return "reset", b"".join(chunks)


def frame(payload):
    return struct.pack("!I", len(payload)) + payload


def test_unix_socket(serve, tmp_path):
    path = tmp_path / "gaspar2.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                   # the file stays, nobody listens: a stale socket
    server = serve("tests.handlers:work", "--workers", "1", "-b", "unix:%s" % path,
                   "--access-log")
    assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert "removing the stale socket file" in server.log()
    assert unix_exchange(path, frame(b"over unix")) == ("ok", b"over unix")
    assert unix_exchange(path, frame(b"")) == ("ok", b"")
    assert unix_exchange(path, frame(b"fail")) == ("reset", b"")       # a failure is a reset
    assert unix_exchange(path, frame(b"x" * 200000)) == ("ok", b"x" * 200000)
    assert client.request(server.url, b"and tcp", timeout=30) == b"and tcp"
    server.wait_log(r"unix:%s ok in=9 out=9" % re.escape(str(path)))
    server.stop()
    assert not path.exists()


def test_unix_socket_mode_and_refusing_a_live_socket(serve, tmp_path):
    path = tmp_path / "s.sock"
    first = serve("gaspar2.examples:echo", "--workers", "1", "-b", "unix:%s" % path,
                  "--unix-socket-mode", "600")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = Server("gaspar2.examples:echo", ["--workers", "1", "-b", "unix:%s" % path],
                    tmp_path / "second.log")
    assert second.wait_exit() == 1
    assert "another process listens on unix:%s" % path in second.log()
    second.stop()
    assert unix_exchange(path, frame(b"still")) == ("ok", b"still")
    first.stop()


def test_socket_activation(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    server = start_activated(tmp_path, listener, 3, "self", "tests.handlers:work", ["-w", "2"],
                             environment(LISTEN_FDS="1"))
    try:
        server.wait_serving()
        assert server.port == port and "(from systemd)" in server.log()
        listener.close()            # the server holds its own copy
        assert client.request(server.url, b"activated", timeout=30) == b"activated"
        # Neither variable is left for the workers (nor for what they start).
        assert client.request(server.url, b"env:LISTEN_FDS", timeout=30) == b"-"
        assert client.request(server.url, b"env:LISTEN_PID", timeout=30) == b"-"
    finally:
        server.stop()


def test_fd_bind_and_a_foreign_listen_pid(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))         # bound, not listening: the server listens
    port = listener.getsockname()[1]
    # LISTEN_PID names another process: the variables are not for this one.
    server = start_activated(tmp_path, listener, 5, "1", "gaspar2.examples:echo",
                             ["-w", "1", "-b", "fd://5"], environment(LISTEN_FDS="1"))
    listener.close()
    try:
        server.wait_serving()
        assert server.port == port and "(from systemd)" not in server.log()
        assert client.request(server.url, b"by fd", timeout=30) == b"by fd"
    finally:
        server.stop()


def test_sd_notify(serve, tmp_path):
    path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(path)
    notify.settimeout(60)
    server = serve("tests.handlers:work", "--workers", "2", wait=False,
                   env=environment(NOTIFY_SOCKET=path))

    def until(line):
        seen = []
        while line not in seen:
            seen = notify.recv(4096).decode().splitlines()
        return seen

    assert "STATUS=starting 2 workers" in until("STATUS=starting 2 workers")
    ready = until("READY=1")
    server.wait_serving()
    assert "STATUS=serving tests.handlers:work on %s with 2 workers" % server.url in ready
    assert client.request(server.url, b"env:NOTIFY_SOCKET", timeout=30) == b"-"
    server.signal(signal.SIGHUP)
    reloading = until("RELOADING=1")
    assert any(re.fullmatch(r"MONOTONIC_USEC=\d+", line) for line in reloading)
    assert "STATUS=serving tests.handlers:work on %s with 2 workers (reloaded)" % server.url \
        in until("READY=1")
    server.signal(signal.SIGTERM)
    assert "STOPPING=1" in until("STOPPING=1")
    assert server.wait_exit() == 0
    notify.close()


def test_abstract_notify_socket(serve):
    name = "gaspar2-test-%d" % os.getpid()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + name)
    notify.settimeout(60)
    serve("gaspar2.examples:echo", "--workers", "1", env=environment(NOTIFY_SOCKET="@" + name))
    wait_for(lambda: "READY=1" in notify.recv(4096).decode().splitlines(), message="READY=1")
    notify.close()
