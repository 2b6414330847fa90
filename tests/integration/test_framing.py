"""Exact framing over real sockets: partial frames, odd clients, sizes at and over the limit."""

import os
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gaspar2 import client

from conftest import connect, exchange

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    from conftest import Server
    server = Server("gaspar2.examples:echo",
                    ["--workers", "2", "--max-message-size", str(64 * 2**20)],
                    tmp_path_factory.mktemp("echo") / "server.log")
    yield server.wait_serving()
    server.stop()


def frame(payload):
    return struct.pack("!I", len(payload)) + payload


def test_empty_payload_is_an_empty_success(echo_server):
    assert exchange(echo_server, frame(b"")) == ("ok", b"")
    assert client.request(echo_server.url, b"", timeout=30) == b""


def test_one_byte_at_a_time(echo_server):
    payload = bytes(range(256))
    with connect(echo_server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in frame(payload):
            sock.send(bytes([byte]))
            time.sleep(0.001)          # the client trickles; the server must not care
        assert sock.makefile("rb").read() == payload


def test_half_close_after_sending(echo_server):
    assert exchange(echo_server, frame(b"half closed"), shut_wr=True) == ("ok", b"half closed")


def test_64_mib_payload(echo_server):
    payload = os.urandom(1 << 16) * 1024
    assert client.request(echo_server.url, payload, timeout=120) == payload


def test_length_over_the_limit_is_refused_without_reading(tmp_path, serve):
    server = serve("gaspar2.examples:echo", "--workers", "1", "--max-message-size", "1000")
    # Only the header is sent: the server must not wait for the 1001 payload bytes.
    assert exchange(server, struct.pack("!I", 1001))[0] == "reset"
    assert exchange(server, frame(b"x" * 1000)) == ("ok", b"x" * 1000)
    assert "length 1001 is over max_message_size 1000" in server.wait_log("over max_message_size")


def test_frame_cut_short_and_empty_connections(echo_server):
    with connect(echo_server) as sock:
        sock.sendall(struct.pack("!I", 100) + b"only ten b")
    with connect(echo_server):
        pass
    with connect(echo_server) as sock:
        sock.sendall(b"\x00\x00")
    echo_server.wait_log("closed after 10 of 100 payload bytes")
    echo_server.wait_log("closed after 2 of 4 header bytes")
    echo_server.wait_log("closed after 0 of 4 header bytes")
    assert client.request(echo_server.url, b"still serving", timeout=30) == b"still serving"


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=3000),
       cuts=st.lists(st.integers(min_value=1, max_value=3003), max_size=6))
def test_any_split_of_a_frame_gives_the_same_reply(echo_server, payload, cuts):
    data = frame(payload)
    points = sorted({c for c in cuts if c < len(data)})
    with connect(echo_server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start, end in zip([0, *points], [*points, len(data)], strict=True):
            sock.sendall(data[start:end])
        assert sock.makefile("rb").read() == payload


def test_a_flood_of_bad_frames_is_logged_a_line_a_second(echo_server):
    """Each refused connection is reset, but a crowd of them cannot fill the log: one line
    a second for each kind, with a count of the others."""
    before = echo_server.log().count("is over max_message_size")
    for _ in range(200):
        with connect(echo_server) as sock:
            sock.sendall(struct.pack("!I", 2**32 - 1))
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    assert client.request(echo_server.url, b"still serving", timeout=30) == b"still serving"
    lines = echo_server.log().count("is over max_message_size") - before
    assert 1 <= lines < 20, lines
