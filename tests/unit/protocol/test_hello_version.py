"""The protocol version a remote worker's HELLO says, and the producer's REFUSED."""

import pytest
from hypothesis import given, strategies as st

from gaspar2.protocol import wire

KEY = b"k" * 40
ENDPOINT = "tcp://127.0.0.1:5000"


def test_a_hello_without_a_version_is_version_1():
    frames = wire.encode_hello(2**40, 0, 123, ENDPOINT, KEY, version=None)
    assert len(frames) == 3             # the format of the first release, unchanged
    assert wire.decode(frames).kind == wire.HELLO
    assert wire.hello_version(frames) == 1


@given(st.integers(0, 2**16 - 1), st.sampled_from([b"", KEY]))
def test_a_hello_says_any_two_byte_version(version, key):
    frames = wire.encode_hello(2**40, 0, 123, ENDPOINT, key, version)
    assert len(frames) == 4
    message = wire.decode(frames)
    assert (message.kind, message.worker_id, message.field) == (wire.HELLO, 2**40, 123)
    assert wire.hello_version(message.frames) == version


@given(st.binary(max_size=8).filter(lambda b: len(b) != 2))
def test_a_version_frame_of_another_size_is_malformed(version):
    frames = [*wire.encode_hello(2**40, 0, 1, ENDPOINT, KEY, None), version]
    with pytest.raises(wire.BadMessage, match="version of %d bytes" % len(version)):
        wire.decode(frames)


def test_five_frames_are_not_a_hello():
    frames = [*wire.encode_hello(2**40, 0, 1, ENDPOINT, KEY), b"\0\1"]
    with pytest.raises(wire.BadMessage, match="of 5 frames"):
        wire.decode(frames)


@given(st.lists(st.integers(0, 2**16 - 1), max_size=8), st.text(max_size=2000))
def test_a_refusal_round_trips_its_versions_and_a_bounded_reason(versions, reason):
    frames = wire.encode_refused(reason, versions)
    assert wire.is_control(frames)
    got_versions, got_reason = wire.decode_refused(frames)
    assert got_versions == versions
    assert len(got_reason.encode()) <= wire.MAX_REASON + 3  # a cut character is replaced
    assert reason.startswith(got_reason.rstrip("\ufffd"))


@given(st.binary(max_size=7), st.binary(max_size=wire.MAX_REASON + 8))
def test_a_malformed_refusal_is_refused(versions, reason):
    frames = [wire.REFUSED, versions, reason]
    if len(versions) % 2 or len(reason) > wire.MAX_REASON:
        with pytest.raises(wire.BadMessage):
            wire.decode_refused(frames)
    else:
        assert len(wire.decode_refused(frames)[0]) == len(versions) // 2
    with pytest.raises(wire.BadMessage):
        wire.decode_refused(frames[:2])
