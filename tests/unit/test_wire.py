"""Messages on the sinks and the fork server's channel: every decode validates."""

from hypothesis import given, settings, strategies as st

from gaspar2 import wire


def test_each_kind_round_trips():
    head = wire.encode_head(wire.REPLY, 7, 42)
    assert wire.decode([head, b"body"]) == (wire.REPLY, 7, 42, [head, b"body"])
    head = wire.encode_head(wire.HELLO, 3, 999)
    assert wire.decode([head])[:3] == (wire.HELLO, 3, 999)
    assert wire.decode([head, b"tcp://h:1", b"key"]).kind == wire.HELLO
    assert wire.decode([wire.encode_head(wire.HEARTBEAT, 5)])[:3] == (wire.HEARTBEAT, 5, 0)


def test_malformed_messages_are_refused_with_a_reason():
    reply = wire.encode_head(wire.REPLY, 7, 42)
    for frames, reason in [
        ([b"H"], "head of 1 bytes"),
        ([reply], "of 1 frames"),
        ([reply, b"a", b"b"], "of 3 frames"),
        ([reply + b"x", b"body"], "head of 18 bytes"),
        ([b"Z" + reply[1:], b"body"], "unknown kind"),
        ([b"", b"body"], "unknown kind"),
        ([wire.encode_head(wire.HELLO, 1, 2), b"only one"], "of 2 frames"),
    ]:
        try:
            wire.decode(frames)
        except wire.BadMessage as exc:
            assert reason in str(exc), (frames, exc)
        else:
            raise AssertionError("accepted %r" % frames)


@settings(max_examples=500)
@given(frames=st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_random_frames_decode_or_are_refused(frames):
    """Nothing a peer sends makes decode raise anything but BadMessage."""
    try:
        message = wire.decode(frames)
    except wire.BadMessage:
        return
    assert message.kind in wire.HEADS and len(frames) in wire.FRAME_COUNTS[message.kind]


def test_id_lists_must_be_whole():
    assert wire.unpack_ids(wire.pack_ids([1, 2**64 - 1])) == (1, 2**64 - 1)
    try:
        wire.unpack_ids(b"123")
    except wire.BadMessage:
        pass
    else:
        raise AssertionError("a 3-byte id list was accepted")


@given(records=st.lists(st.tuples(st.sampled_from([wire.SPAWN, wire.KILL, wire.SPAWNED, wire.EXITED]),
                                  st.integers(0, 2**64 - 1), st.integers(-2**63, 2**63 - 1),
                                  st.integers(-2**63, 2**63 - 1)), max_size=20),
       cuts=st.lists(st.integers(0, 600), max_size=8))
def test_channel_records_survive_any_split(records, cuts):
    data = b"".join(wire.encode_record(*r) for r in records)
    points = sorted({c for c in cuts if 0 < c < len(data)})
    reader, got = wire.RecordReader(), []
    for a, b in zip([0] + points, points + [len(data)]):
        got.extend(reader.feed(data[a:b]))
    assert got == records and reader.buffer == b""
