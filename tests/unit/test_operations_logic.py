"""Fork-free tests of the operations logic: where settings come from, bind addresses, JSON
log lines, the health endpoint, and the unix reader that holds back a frame's last byte."""

import json
import logging
import socket
import struct
import sys

import pytest
from hypothesis import given, strategies as st

from gaspar2 import config, logs, settings
from gaspar2.frontend import listeners
from gaspar2.producer import metrics
from gaspar2.protocol import wire


def test_each_source_overrides_the_ones_below():
    merged = config.merge([{"workers": 3, "timeout": 7.0, "max_requests": 50},
                           {"workers": 2, "timeout": 5.0},
                           {"workers": 1}])
    values = settings.resolve(merged)
    assert (values.workers, values.timeout, values.max_requests) == (1, 5.0, 50)
    assert values.worker_timeout == 5.0 and values.bind == ["127.0.0.1:10123"]


def test_host_and_port_add_one_address_to_their_own_source():
    assert config.merge([{"bind": ["0.0.0.0:9000"]}, {"port": 9001}])["bind"] == \
        ["127.0.0.1:9001"]
    assert config.merge([{"host": "0.0.0.0"}, {"port": 0, "bind": ["unix:/s"]}])["bind"] == \
        ["unix:/s", "0.0.0.0:0"]
    assert config.merge([{"host": "::1", "port": 5}])["bind"] == ["[::1]:5"]
    assert "host" not in config.merge([{"host": "h"}])
    resolved = settings.resolve({"port": 0, "bind": "unix:/s"})   # Producer(..., port, bind=)
    assert resolved.bind == ["unix:/s", "127.0.0.1:0"]


def test_config_file_names(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("import os\n_private = 1\ndef helper(): pass\n"
                    "bind = '0.0.0.0:1'\nmax_message_size = '2MiB'\ntimeout = None\n")
    assert config.load_file(str(path)) == {"bind": ["0.0.0.0:1"], "max_message_size": 2 * 2**20,
                                           "timeout": None}
    path.write_text("max_request = 3\n")
    with pytest.raises(config.ConfigError, match=r"'max_request' is not a setting \(did you mean "
                                                 r"'max_requests'\?\)"):
        config.load_file(str(path))
    for text, says in [("print_config = True\n", "not a setting"),
                       ("workers = 'many'\n", "workers: invalid literal"),
                       ("raise SystemError('x')\n", "raised SystemError: x")]:
        path.write_text(text)
        with pytest.raises(config.ConfigError, match=says):
            config.load_file(str(path))


def test_print_config_renders_a_config_file_that_loads_back(tmp_path):
    values = settings.resolve({"bind": ["unix:/s", "[::]:1"], "unix_socket_mode": "600",
                               "timeout": 3})
    path = tmp_path / "again.py"
    path.write_text(config.render(values, None))
    assert settings.resolve(config.load_file(str(path))) == values


@pytest.mark.parametrize("address, parsed", [
    ("127.0.0.1:10123", ("tcp", ("127.0.0.1", 10123))),
    ("[::1]:8", ("tcp", ("::1", 8))),
    (":8", ("tcp", ("0.0.0.0", 8))),
    ("unix:/run/g.sock", ("unix", "/run/g.sock")),
    ("unix:@abstract", ("unix", "\0abstract")),   # the name as bound: a leading NUL
    ("fd://3", ("fd", 3)),
])
def test_bind_addresses(address, parsed):
    assert listeners.parse(address) == parsed


@pytest.mark.parametrize("address", ["localhost", "::1:8", "unix:", "fd://x", "host:port", "1:2:3"])
def test_bad_bind_addresses(address):
    with pytest.raises(ValueError, match=r"expected|needs a path"):
        listeners.parse(address)


def test_modes():
    assert settings.mode("660") == settings.mode("0o660") == settings.mode(0o660) == 0o660
    with pytest.raises(ValueError):
        settings.mode("rw-r--r--")


def record(message, *args, **kwargs):
    rec = logging.LogRecord("gaspar2", logging.WARNING, __file__, 1, message, args, None)
    rec.__dict__.update(kwargs)
    return rec


def test_json_lines_hold_a_traceback_in_one_field():
    fmt = logs.JSONFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record("setup() failed")
        rec.exc_info = sys.exc_info()
    line = fmt.format(rec)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "setup() failed" and entry["level"] == "warning"
    assert entry["traceback"].endswith("ValueError: boom") and entry["pid"] > 0
    entry = json.loads(fmt.format(record("%s: handler failed in\n%s", "1.2.3.4:5", "Trace\nback")))
    assert entry["message"] == "1.2.3.4:5: handler failed in"
    assert entry["traceback"] == "Trace\nback"
    entry = json.loads(fmt.format(record("x", client="c", outcome="ok", bytes_in=1, bytes_out=2,
                                         ms=0.5, worker=None)))
    assert {k: entry[k] for k in logs.ACCESS_FIELDS} == {"client": "c", "outcome": "ok",
                                                         "bytes_in": 1, "bytes_out": 2,
                                                         "ms": 0.5, "worker": None}


def call(app, path, method="GET"):
    answer = {}

    def start_response(status, headers):
        answer["status"], answer["headers"] = status, dict(headers)
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    return answer["status"], body


def test_health_endpoint():
    state = {"workers": 0}
    app = metrics.health_app(lambda: metrics.health("starting", dict(state)),
                             lambda environ, start: (start("200 OK", []), [b"metrics"])[1])
    status, body = call(app, "/healthz")
    assert status.startswith("503") and json.loads(body) == {"state": "starting", "workers": 0}
    assert body.count(b"\n") == 1 and body.endswith(b"\n")
    state["workers"] = 2
    assert call(app, "/healthz")[0].startswith("200")
    assert call(app, "/metrics") == ("200 OK", b"metrics")
    assert call(app, "/healthz", "POST")[0].startswith("405")


@given(payload=st.binary(max_size=3000), tail=st.binary(max_size=5))
def test_the_unix_reader_holds_back_the_last_byte(payload, tail):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        data = struct.pack("!I", len(payload)) + payload
        theirs.sendall(data + tail)
        reader = listeners.HeldBackReader(4096)
        assert reader.read_from(ours)
        assert bytes(reader.payload[:-1]) == payload[:-1]
        assert ours.recv(1, socket.MSG_PEEK) == data[-1:]     # still in the socket
        listeners.release(ours)
        if tail:
            assert ours.recv(16) == tail      # what came after the frame was never read


def test_the_unix_reader_refuses_what_the_frame_reader_refuses():
    for data, kind in [(struct.pack("!I", 5000), "too_long"), (b"\0\0", "closed"),
                       (struct.pack("!I", 3) + b"ab", "closed")]:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)
            reader = listeners.HeldBackReader(4096)
            with pytest.raises(wire.FrameError) as caught:
                while not reader.read_from(ours):
                    pass
            assert caught.value.kind == kind
