"""The pure rules behind what faces the outside: how the metrics port reads a request and
how much it holds, who may use an abstract unix socket, how secret keys are written and
checked, and how a peer's bytes are quoted in a log line. No server, no process."""

import ast
import os
import socket
import stat

import pytest
from hypothesis import given, strategies as st

from gaspar2 import logs
from gaspar2.frontend import httpd, listeners
from gaspar2.frontend.listeners import admits
from gaspar2.producer.metrics import connections_for
from gaspar2.protocol import curve

PROBES = [
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:9123\r\nUser-Agent: kube-probe/1.29\r\n"
    b"Accept: */*\r\nConnection: close\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0"
    b"\r\nAccept-Encoding: gzip\r\n\r\n",
    b"HEAD /healthz HTTP/1.0\n\n",
]


@pytest.mark.parametrize("request_bytes", PROBES)
def test_what_probers_and_scrapers_send_is_read(request_bytes):
    end = httpd.header_end(request_bytes)
    assert end == len(request_bytes)
    method, path, query, version, fields = httpd.parse(request_bytes[:end])
    assert method in ("GET", "HEAD") and path in ("/healthz", "/metrics") and not query
    assert version.startswith("HTTP/1.")
    assert all(key.startswith("HTTP_") for key in fields)


def test_a_header_is_not_whole_before_its_blank_line():
    assert httpd.header_end(b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == -1
    assert httpd.header_end(b"GET / HTTP/1.1\r\n\r\nbody") == len(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("head, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),     # TLS
    (b"PRI * HTTP/2.0\r\n\r\n", 400),
    (b"GET http://evil/ HTTP/1.1\r\n\r\n", 400),
    (b"GET /healthz\r\n\r\n", 400),
    (b"GET /a b HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (httpd.MAX_FIELDS + 1) + b"\r\n", 431),
])
def test_what_is_not_a_plain_request_is_refused(head, status):
    with pytest.raises(httpd.BadRequest) as caught:
        httpd.parse(head)
    assert caught.value.status == status


@given(st.binary(max_size=httpd.MAX_HEADER))
def test_any_bytes_are_read_or_refused_never_an_error(data):
    try:
        method, path, _, _, fields = httpd.parse(data)
    except httpd.BadRequest as exc:
        assert exc.status in httpd.REASONS
    else:
        assert method.isupper() and path.startswith("/")
        assert all(isinstance(value, str) for value in fields.values())


def test_a_reply_says_its_length_and_that_the_connection_closes():
    reply = httpd.reply_bytes("200 OK", [("Content-Length", "99"), ("Connection", "keep-alive"),
                                         ("Content-Type", "text/plain")], b"hello", False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert body == b"hello"
    assert head.split(b"\r\n") == [b"HTTP/1.1 200 OK", b"Content-Type: text/plain",
                                   b"Content-Length: 5", b"Connection: close"]
    assert httpd.reply_bytes("200 OK", [], b"hello", True).endswith(b"Content-Length: 5\r\n"
                                                                   b"Connection: close\r\n\r\n")


def test_the_metrics_port_holds_a_share_of_the_file_limit():
    assert connections_for(256) == 16       # never less: a prober's slot and a few
    assert connections_for(1024) == 64
    assert connections_for(4096) == 256
    assert connections_for(1 << 20) == 1024


@given(st.binary(max_size=300), st.integers(1, 100))
def test_a_peers_bytes_are_quoted_as_one_bounded_printable_line(data, limit):
    text = logs.escaped(data, limit)
    assert text.isprintable() and "\n" not in text and "\x1b" not in text
    quoted, cut, rest = text.partition("... (")
    if len(data) > limit:
        assert cut and rest == "%d bytes)" % len(data)
    else:
        quoted = text
    assert ast.literal_eval(quoted) == data[:limit]
    assert len(quoted) <= 4 * limit + 3


@pytest.mark.parametrize("mode, peer_uid, peer_gids, allowed", [
    (0o660, 1000, [1000], True),        # the owner
    (0o600, 1000, [5], True),
    (0o060, 1000, [1000], False),       # the owner's bits decide for the owner
    (0o660, 2000, [1000], True),        # the group, primary
    (0o660, 2000, [7, 1000], True),     # the group, supplementary
    (0o600, 2000, [1000], False),
    (0o660, 2000, [2000], False),       # others
    (0o662, 2000, [2000], True),
    (0o000, 0, [0], True),              # root, as with a socket file
    (0o660, -1, [], False),             # credentials that could not be read
])
def test_an_abstract_socket_admits_whom_its_mode_would(mode, peer_uid, peer_gids, allowed):
    assert admits(mode, 1000, 1000, peer_uid, peer_gids) is allowed


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_secret_keys_are_written_for_their_owner_alone(tmp_path, umask_022):
    secret = tmp_path / "p.key_secret"
    secret.write_text("old, readable by all\n")
    public_path, secret_path = curve.generate_keys(str(tmp_path), "p")
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600     # replaced, not reused
    assert stat.S_IMODE(os.stat(public_path).st_mode) == 0o644
    public, secret_key = curve.load_secret(secret_path)
    assert curve.load_public_keys(public_path) == [public] and len(secret_key) == 40
    assert sorted(os.listdir(tmp_path)) == ["p.key", "p.key_secret"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o700 | 0o010])
def test_a_secret_key_others_may_read_or_change_is_refused(tmp_path, umask_022, mode):
    _, secret_path = curve.generate_keys(str(tmp_path), "p")
    os.chmod(secret_path, mode)
    with pytest.raises(curve.KeyFileError) as caught:
        curve.load_secret(secret_path)
    message = str(caught.value)
    assert secret_path in message and "chmod 600 %s" % secret_path in message
    assert "%04o" % mode in message
    os.chmod(secret_path, 0o400)
    assert curve.load_secret(secret_path)


def test_a_listener_refusing_handshakes_lets_the_ones_under_way_in():
    """New SYNs are dropped (the client's kernel tries again later), while a connection
    whose handshake was done keeps its bytes coming and is accepted."""
    listener = listeners.open_one("127.0.0.1:0", 16, 0o660)
    with listener.sock:
        listener.sock.setblocking(True)
        address = listener.sock.getsockname()
        before = socket.create_connection(address, timeout=5)
        assert listeners.refuse_handshakes(listener)
        before.sendall(b"under way")
        accepted, _ = listener.sock.accept()
        with before, accepted:
            assert accepted.recv(16) == b"under way"
        with pytest.raises(TimeoutError):
            socket.create_connection(address, timeout=0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
