"""The deployment recipes in docs/deploy/, tried as far as this machine can: the systemd units pass
systemd-analyze and their command serves under socket activation and sd_notify; the config
file example loads and serves; the container recipe's command and health check work."""

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from gaspar2 import client

from conftest import ROOT, Server, environment, start_activated

pytestmark = pytest.mark.timeout(120)

DOCS = os.path.join(ROOT, "docs", "deploy")


def read(name):
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def unit_value(text, key):
    (value,) = re.findall(r"^%s=(.*)$" % key, text, re.M)
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_systemd_units_pass_systemd_analyze(tmp_path):
    service = read("gaspar2.service")
    script = os.path.join(os.path.dirname(sys.executable), "gaspar2")
    service = service.replace(unit_value(service, "ExecStart").split()[0], script)
    service = service.replace("WorkingDirectory=/opt/myapp", "WorkingDirectory=%s" % tmp_path)
    (tmp_path / "gaspar2.service").write_text(service)
    (tmp_path / "gaspar2.socket").write_text(read("gaspar2.socket"))
    done = subprocess.run(["systemd-analyze", "verify", "./gaspar2.service", "./gaspar2.socket"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "gaspar2." not in done.stderr, done.stderr     # no warning about either unit


def test_the_units_command_serves_as_systemd_starts_it(tmp_path):
    service, unit_socket = read("gaspar2.service"), read("gaspar2.socket")
    host, _ = unit_value(unit_socket, "ListenStream").rsplit(":", 1)
    argv = shlex.split(unit_value(service, "ExecStart"))
    assert argv[1:3] == ["serve", "myapp:handle"] and argv[3] == "-c"
    args = ["-c", os.path.join(DOCS, "gaspar2.conf.py")]   # the example config file
    assert unit_value(service, "KillMode") == "mixed"
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen(16)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    metrics = "127.0.0.1:%d" % free_port()
    env = environment(LISTEN_FDS="1", NOTIFY_SOCKET=str(tmp_path / "notify"),
                      GASPAR2_CMD_ARGS="--metrics %s -w 2" % metrics)
    server = start_activated(tmp_path, listener, 3, "self", "tests.handlers:work", args, env)
    listener.close()

    def until(line):
        while line not in notify.recv(4096).decode().splitlines():
            pass
    try:
        until("READY=1")
        server.wait_serving()
        assert client.request(server.url, b"as a unit", timeout=30) == b"as a unit"
        assert "unix:" not in server.log()      # the passed socket replaces the config's binds
        server.signal(signal.SIGHUP)            # ExecReload
        until("RELOADING=1")
        until("READY=1")
        server.signal(getattr(signal, unit_value(service, "KillSignal")))
        until("STOPPING=1")
        assert server.wait_exit() == 0
        entries = [json.loads(line) for line in server.log().splitlines()]   # log_format json
        assert any(e["logger"] == "gaspar2.access" and e["outcome"] == "ok" for e in entries)
    finally:
        server.stop()
        notify.close()


def test_the_config_file_example_loads():
    done = subprocess.run([sys.executable, "-m", "gaspar2", "serve", "--print-config", "-c",
                           os.path.join(DOCS, "gaspar2.conf.py")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env=environment())
    assert done.returncode == 0, done.stderr
    values = {}
    exec(done.stdout, {}, values)
    assert values["bind"] == ["127.0.0.1:10123", "unix:/run/gaspar2/gaspar2.sock"]
    assert (values["workers"], values["timeout"], values["worker_timeout"]) == (4, 30, 30)
    assert values["log_format"] == "json" and values["unix_socket_mode"] == 0o660


def dockerfile():
    """(instruction, argument) pairs of docs/deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", read("Dockerfile"))
    return [tuple(line.split(None, 1)) for line in text.splitlines()
            if line.strip() and not line.startswith("#")]


def test_the_container_recipe_serves_and_answers_its_health_check(tmp_path):
    steps = dockerfile()
    (env_line,) = [arg for op, arg in steps if op == "ENV"]
    name, _, value = env_line.partition("=")
    (cmd,) = [json.loads(arg) for op, arg in steps if op == "CMD"]
    (check,) = [arg for op, arg in steps if op == "HEALTHCHECK"]
    check = json.loads(check[check.index("CMD") + 3:])
    exposed = next(arg.split() for op, arg in steps if op == "EXPOSE")
    ports = {port: str(free_port()) for port in exposed}    # the recipe's ports, made free

    def local(text):
        for port, free in ports.items():
            text = text.replace(":" + port, ":" + free)
        return text
    env = environment(**{name: local(shlex.split(value)[0])})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    assert cmd[:2] == ["gaspar2", "serve"]
    server = Server(cmd[2], cmd[3:], tmp_path / "log", env=env, port=None, cwd=tmp_path)
    try:
        server.wait_serving()
        assert client.request("127.0.0.1:%d" % server.port, b"boxed", timeout=30) == b"boxed"
        probe = [local(part) for part in check]
        done = subprocess.run(probe, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        stop = next(arg for op, arg in steps if op == "STOPSIGNAL")
        server.signal(getattr(signal, stop))
        assert server.wait_exit() == 0
        for line in server.log().splitlines():
            json.loads(line)
    finally:
        server.stop()


def test_the_config_file_example_serves_with_the_changes_its_header_names(tmp_path):
    """Its first lines name what to change outside gaspar2.service: the socket's directory
    and the ports. With exactly those changed, it serves on both addresses."""
    text = read("gaspar2.conf.py")
    header = text[:text.index("\n\n", text.index("RuntimeDirectory"))]
    assert "/run/gaspar2" in header and "10123" in header and "9123" in header
    port, metrics = free_port(), free_port()
    changed = (text.replace("/run/gaspar2", str(tmp_path))
               .replace("10123", str(port)).replace("9123", str(metrics)))
    (tmp_path / "gaspar2.conf.py").write_text(changed)
    server = Server("tests.handlers:work", ["-c", str(tmp_path / "gaspar2.conf.py"), "-w", "1"],
                    tmp_path / "log", env=environment(), port=None)
    try:
        server.wait_serving()
        assert client.request("127.0.0.1:%d" % port, b"by tcp", timeout=30) == b"by tcp"
        url = "unix:%s" % (tmp_path / "gaspar2.sock")
        assert client.request(url, b"by unix", timeout=30) == b"by unix"
    finally:
        server.stop()
