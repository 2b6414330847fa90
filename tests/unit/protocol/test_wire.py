"""Messages on the sinks and the fork server's channel: every decode validates."""

import zmq
from hypothesis import given, settings, strategies as st

from gaspar2.protocol import wire

KEY = b"x" * 40


def test_each_kind_round_trips_with_its_sender_and_token():
    head = wire.encode_head(wire.REPLY, 7, 99, 42)
    assert wire.decode([head, b"body"])[:5] == (wire.REPLY, 7, 99, 42, [head, b"body"])
    assert wire.decode([head, b"body"]).body == b"body"
    assert wire.decode([head + b"body"]).body == b"body"        # small: in the head's frame
    assert wire.decode([head]).body == b""
    head = wire.encode_head(wire.HELLO, 3, 5, 999)
    assert wire.decode([head])[:4] == (wire.HELLO, 3, 5, 999)
    assert wire.decode([head, b"tcp://h:1", KEY]).kind == wire.HELLO
    assert wire.decode([head, b"tcp://h:1", b""]).kind == wire.HELLO
    assert wire.decode([wire.encode_head(wire.HEARTBEAT, 5, 6)])[:4] == (wire.HEARTBEAT, 5, 6, 0)


def test_malformed_messages_are_refused_with_a_reason():
    reply = wire.encode_head(wire.REPLY, 7, 1, 42)
    hello = wire.encode_head(wire.HELLO, 1, 0, 2)
    for frames, reason in [
        ([b"H"], "head of 1 bytes"),
        ([reply[:-1]], "head of 24 bytes"),
        ([reply, b"a", b"b"], "of 3 frames"),
        ([reply + b"x", b"body"], "head of 26 bytes"),
        ([reply[:-1], b"body"], "head of 24 bytes"),
        ([b"Z" + reply[1:], b"body"], "unknown kind"),
        ([b"", b"body"], "unknown kind"),
        ([hello, b"only one"], "of 2 frames"),
        ([hello, b"http://h:1", KEY], "endpoint"),
        ([hello, b"tcp://h:port", KEY], "endpoint"),
        ([hello, b"tcp://" + b"h" * 300 + b":1", KEY], "endpoint"),
        ([hello, "tcp://é:1".encode(), KEY], "endpoint"),
        ([hello, b"tcp://h:1", b"short"], "key of 5 bytes"),
        ([b"G" + bytes(24), bytes(8)], "unknown kind"),     # give-backs are gone
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
    assert (message.body is not None) == (message.kind in wire.BODIED)
    assert all(isinstance(n, int) for n in message[1:4])


@settings(max_examples=300)
@given(kind=st.sampled_from(sorted(wire.HEADS)), fields=st.lists(st.integers(0, 2**32 - 1),
                                                                   min_size=3, max_size=3),
       frames=st.lists(st.binary(max_size=48), max_size=3))
def test_well_headed_messages_with_any_body_decode_or_are_refused(kind, fields, frames):
    """A right head followed by anything: decoded whole and checked, or BadMessage."""
    head = wire.encode_head(kind, fields[0], fields[1],
                            None if kind == wire.HEARTBEAT else fields[2])
    try:
        message = wire.decode([head, *frames])
    except wire.BadMessage:
        return
    assert (message.kind, message.worker_id, message.token) == (kind, fields[0], fields[1])
    if kind == wire.HELLO and frames:
        assert frames[0].startswith(b"tcp://") and len(frames[1]) in wire.KEY_SIZES


def test_a_welcome_is_a_control_message_and_a_batch_is_not():
    welcome = wire.encode_welcome(2**64 - 1, 1234)
    assert wire.is_control(welcome)
    assert wire.decode_welcome(welcome) == (2**64 - 1, 1234)
    assert not wire.is_control([wire.encode_batch([1], [b"payload"])])
    assert not wire.is_control(sent_batch([], []))
    for bad in ([b"W"], [b"W", b"short"], [b"X", bytes(16)]):
        try:
            wire.decode_welcome(bad)
        except wire.BadMessage:
            continue
        raise AssertionError("accepted %r" % bad)


@given(records=st.lists(st.tuples(st.sampled_from([wire.SPAWN, wire.KILL, wire.SPAWNED,
                                                    wire.EXITED]),
                                  st.integers(0, 2**64 - 1), st.integers(-2**63, 2**63 - 1),
                                  st.integers(-2**63, 2**63 - 1)), max_size=20),
       cuts=st.lists(st.integers(0, 600), max_size=8))
def test_channel_records_survive_any_split(records, cuts):
    data = b"".join(wire.encode_record(*r) for r in records)
    points = sorted({c for c in cuts if 0 < c < len(data)})
    reader, got = wire.RecordReader(), []
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        got.extend(reader.feed(data[a:b]))
    assert got == records and reader.buffer == b""


def sent_batch(ids, payloads, epoch=0, seq=0):
    """What send_batch puts on a real (inproc) ZeroMQ socket, as the worker receives it."""
    ctx = zmq.Context()
    try:
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        pull.bind("inproc://batch")
        push.connect("inproc://batch")
        wire.send_batch(push, ids, payloads, epoch, seq)
        return pull.recv_multipart(copy=False)
    finally:
        ctx.destroy(linger=0)


@settings(max_examples=150, deadline=None)
@given(requests=st.lists(st.tuples(st.integers(0, 2**63 - 1), st.booleans(),
                                   st.binary(max_size=300)), max_size=9),
       large=st.booleans(), epoch=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**40))
def test_batches_round_trip_in_one_frame(requests, large, epoch, seq):
    """Every batch travels as one frame, large payloads too (a send never starts pyzmq's
    zero-copy thread); the worker gets every id, flag and payload back, in order."""
    if large and requests:
        requests[0] = (requests[0][0], False, bytes(300 * 1024))
    ids = [rid | (wire.SHARED_BIT if shared else 0) for rid, shared, _ in requests]
    frames = sent_batch(ids, [p for _, _, p in requests], epoch, seq)
    assert len(frames) == 1
    batch = wire.decode_batch(frames)
    assert [(e, s, rid, bytes(p), sh) for e, s, rid, p, sh in batch] == [
        (epoch, seq + i, rid, payload, shared) for i, (rid, shared, payload) in enumerate(requests)]


@settings(max_examples=500)
@given(data=st.binary(max_size=120), count=st.integers(0, 2**32 - 1))
def test_a_batch_decodes_or_is_refused(data, count):
    """Whatever the count and lengths claim, decode checks them against the frame's size."""
    fixed = wire.BATCH_FIXED.pack(wire.BATCH, 1, 2, count)
    for view in (memoryview(data), memoryview(fixed + data), memoryview(fixed + data + fixed)):
        try:
            batch = wire.decode_batch([view])
        except wire.BadMessage:
            continue
        size = sum(len(p) for *_, p, _ in batch) + 2 * len(fixed) + 12 * len(batch)
        assert size == len(view)


def test_layouts_are_made_once_per_count_and_kept_for_a_bounded_number_of_counts():
    layouts = wire.Layouts("!{}Q")
    assert layouts[3] is layouts[3]
    assert layouts[3].size == 24
    for count in range(2000):
        assert layouts[count].size == 8 * count
    assert len(layouts) == 1024
