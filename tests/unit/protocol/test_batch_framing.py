"""A batch survives no transport fault as another request: whatever happens to the frames
between the producer and a worker (cut short, run together, regrouped into multipart
messages, dropped), every message the worker decodes is exactly one batch the producer sent,
and anything else is refused."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from gaspar2.protocol import wire

requests = st.lists(st.tuples(st.integers(0, 2**63 - 1), st.booleans(), st.binary(max_size=200)),
                    max_size=5)

# What a faulty transport may do with the next frames of the stream.
operations = st.lists(st.one_of(
    st.tuples(st.just("whole"), st.just(1)),
    st.tuples(st.just("group"), st.integers(2, 4)),      # frames as parts of one message
    st.tuples(st.just("join"), st.integers(2, 4)),       # frames' bytes run together
    st.tuples(st.just("cut"), st.integers(0, 400)),      # a frame cut short
    st.tuples(st.just("cut-join"), st.integers(0, 400)),  # cut short, then the next appended
    st.tuples(st.just("splice"), st.just(2)),     # a frame's start, the next one in its place
    st.tuples(st.just("drop"), st.just(1)),
), max_size=20)


def decoded(frames: list) -> list[tuple[int, int, int, bytes, bool]]:
    return [(e, s, rid, bytes(p), shared) for e, s, rid, p, shared in wire.decode_batch(frames)]


@settings(max_examples=400, deadline=None)
@given(batches=st.lists(requests, min_size=1, max_size=8), ops=operations,
       epoch=st.integers(0, 2**64 - 1), first=st.integers(0, 2**40))
def test_every_decoded_message_is_exactly_a_batch_that_was_sent(batches, ops, epoch, first):
    sent, frames, seq = [], [], first
    for batch in batches:
        ids = [rid | (wire.SHARED_BIT if shared else 0) for rid, shared, _ in batch]
        frame = wire.encode_batch(ids, [p for *_, p in batch], epoch, seq)
        sent.append([(epoch, seq + i, rid, p, shared) for i, (rid, shared, p) in enumerate(batch)])
        frames.append(frame)
        seq += max(len(batch), 1)       # as the producer numbers them: no two alike

    messages, at = [], 0
    for op, n in ops:
        if at >= len(frames):
            break
        if op == "whole":
            messages.append([frames[at]])
            at += 1
        elif op == "group":
            messages.append(frames[at:at + n])
            at += n
        elif op == "join":
            messages.append([b"".join(frames[at:at + n])])
            at += n
        elif op == "cut":
            messages.append([frames[at][:n]])
            at += 1
        elif op == "cut-join":
            messages.append([frames[at][:n] + b"".join(frames[at + 1:at + 2])])
            at += 2
        elif op == "splice" and at + 1 < len(frames):
            head, tail = frames[at], frames[at + 1]
            messages.append([head[:max(len(head) - len(tail), 0)] + tail])
            at += 2
        else:
            at += 1
    messages.extend([frame] for frame in frames[at:])

    for message in messages:
        try:
            batch = decoded(message)
        except wire.BadMessage:
            continue
        assert batch in sent, "a message decoded into requests that were never sent together"
        assert len(message) == 1 and bytes(message[0]) in frames


@given(ids=st.lists(st.integers(0, 2**63 - 1), max_size=6), data=st.data())
def test_a_batch_missing_any_byte_is_refused(ids, data):
    payloads = [data.draw(st.binary(max_size=50)) for _ in ids]
    frame = wire.encode_batch(ids, payloads, 3, 4)
    cut = data.draw(st.integers(0, len(frame) - 1))
    for broken in (frame[:cut], frame[:cut] + frame[cut + 1:]):
        try:
            wire.decode_batch([broken])
        except wire.BadMessage:
            continue
        raise AssertionError("a batch with a byte missing was accepted")
