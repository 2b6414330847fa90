"""FrameReader over every way a frame can arrive, on a socketpair: no server, no process."""

import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from gaspar2.frontend.frames import FrameReader
from gaspar2.protocol.wire import FrameError, pack


def feed(chunks, max_size=1 << 20, eof=False):
    """Send ``chunks`` one by one, reading after each; the reader's result and state."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader = FrameReader(max_size)
        done = False
        for chunk in chunks:
            theirs.sendall(chunk)
            done = read(reader, ours)
        if eof:
            theirs.shutdown(socket.SHUT_WR)
            done = read(reader, ours)
        return done, reader


def read(reader, sock):
    try:
        return reader.read_from(sock)
    except BlockingIOError:
        return False


def split(data, cuts):
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5004), max_size=10))
def test_any_chunking_gives_the_payload(payload, cuts):
    done, reader = feed(split(pack(payload), cuts))
    assert done and bytes(reader.payload) == payload


@settings(max_examples=100, deadline=None)
@given(payload=st.binary(min_size=1, max_size=3000), cut=st.integers(0, 3003),
       cuts=st.lists(st.integers(0, 3003), max_size=5))
def test_early_eof_says_how_far_it_got(payload, cut, cuts):
    data = pack(payload)
    cut = cut % len(data)
    with pytest.raises(FrameError) as caught:
        feed(split(data[:cut], cuts), eof=True)
    error = caught.value
    assert error.kind == FrameError.CLOSED
    if cut < 4:
        assert error.in_header and (error.got, error.expected) == (cut, 4)
        assert error.is_probe == (cut == 0)
    else:
        assert not error.in_header and (error.got, error.expected) == (cut - 4, len(payload))
        assert not error.is_probe


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1001, 2**32 - 1), cuts=st.lists(st.integers(0, 8), max_size=3))
def test_a_length_over_the_limit_is_refused_at_the_header(length, cuts):
    with pytest.raises(FrameError) as caught:
        feed(split(struct.pack("!I", length) + b"xyz", cuts), max_size=1000)
    assert ((caught.value.kind, caught.value.got, caught.value.expected)
            == (FrameError.TOO_LONG, length, 1000))
    assert str(caught.value) == "length %d is over max_message_size 1000" % length


@given(payload=st.binary(max_size=100), extra=st.binary(min_size=1, max_size=100))
def test_bytes_past_the_frame_in_the_first_read_are_an_error(payload, extra):
    with pytest.raises(FrameError) as caught:
        feed([pack(payload) + extra])
    assert (caught.value.kind, caught.value.got) == (FrameError.TRAILING, len(extra))


def test_zero_length_is_an_empty_request():
    done, reader = feed([b"\0\0\0\0"])
    assert done and reader.payload == b""


def test_the_limit_itself_is_allowed():
    done, reader = feed([pack(b"x" * 1000)], max_size=1000)
    assert done and len(reader.payload) == 1000


def test_pack_frames_text_as_utf8():
    assert pack("é") == b"\0\0\0\x02\xc3\xa9"
    assert pack(b"") == b"\0\0\0\0"
