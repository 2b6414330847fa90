"""The bookkeeping behind the bounds: memory budget, paused readers, growing frame buffers,
the file-descriptor reserve, throttled logs and the callback guard. No socket but
in-memory stand-ins, no process."""

import logging
import os
import socket

from hypothesis import given, settings, strategies as st

from gaspar2.frontend import frames
from gaspar2.frontend.budget import UNBOUNDED, Budget, Readers
from gaspar2.frontend.fds import FdReserve
from gaspar2.guard import Drops, Throttled, guarded
from gaspar2.protocol import wire

MiB = 2**20


@settings(max_examples=300)
@given(limit=st.integers(1, 2**34), used=st.integers(0, 2**35), replies=st.integers(0, 2**35),
       expected=st.integers(0, 2**28), at_workers=st.integers(0, 100))
def test_room_keeps_expected_replies_within_the_limit_or_lets_one_go(limit, used, replies,
                                                                     expected, at_workers):
    budget = Budget(limit)
    budget.change(used)
    budget.replies = min(replies, used)
    budget.expected = expected
    room = budget.room(lambda: at_workers)
    if expected == 0:
        assert room == UNBOUNDED
    elif at_workers == 0 and budget.replies == 0:
        assert room >= 1, "nothing else frees memory: one must go"
    if 0 < room < UNBOUNDED and not (at_workers == 0 and budget.replies == 0 and room == 1):
        assert budget.used + (at_workers + room) * expected <= limit


def test_the_expected_reply_follows_a_large_one_at_once_and_decays():
    budget = Budget(256 * MiB)
    budget.reply_seen(8 * MiB)
    assert budget.expected == 8 * MiB
    for _ in range(100):
        budget.reply_seen(10)
    assert budget.expected < 10 * 1024


def test_the_budget_counts_replies_apart_and_knows_when_to_trim():
    budget = Budget(100)
    budget.change(80)
    budget.change(20, reply=True)
    assert budget.over() and budget.replies == 20 and budget.free() == 0
    budget.change(-90)
    budget.change(-10, reply=True)
    assert budget.worth_trimming(50) and budget.used == 0
    budget.trimmed()
    assert not budget.worth_trimming(0)


class Conn:
    def __init__(self, n):
        self.n = n

    def __repr__(self):
        return "c%d" % self.n


def test_the_oldest_reader_always_reads_and_others_wait_past_the_limit():
    budget = Budget(4 * MiB)
    readers = Readers(budget)
    conns = [Conn(n) for n in range(4)]
    for conn in conns:
        readers.reading[conn] = None
    assert readers.allowance(conns[2]) == frames.READ_SLICE
    budget.change(4 * MiB - 100)
    assert readers.allowance(conns[2]) == 100
    budget.change(100)
    assert readers.allowance(conns[2]) <= 0
    assert readers.allowance(conns[0]) == frames.READ_SLICE, "the oldest is never held back"
    readers.paused[conns[1]] = None
    readers.paused[conns[2]] = None
    assert readers.forget(conns[3]) is None
    assert readers.forget(conns[0]) is conns[1], "the new oldest is resumed"
    assert list(readers.paused) == [conns[2]]


def test_resuming_follows_the_free_budget_in_order():
    budget = Budget(10 * MiB)
    readers = Readers(budget)
    conns = [Conn(n) for n in range(8)]
    for conn in conns:
        readers.reading[conn] = readers.paused[conn] = None
    budget.change(10 * MiB)
    assert readers.to_resume() == []
    budget.change(-3 * MiB)
    assert readers.to_resume() == conns[:3]
    budget.change(-7 * MiB)
    assert readers.to_resume() == conns[3:]


class Trickle:
    """A socket stand-in that hands out ``data`` in the given chunk sizes."""

    def __init__(self, data, chunks):
        self.data, self.chunks, self.at, self.reads = data, list(chunks), 0, []

    def recv_into(self, view, nbytes=0, flags=0):
        if self.at == len(self.data) or not self.chunks:
            raise BlockingIOError
        size = min(self.chunks[0], len(view), len(self.data) - self.at)
        self.chunks[0] -= size
        if not self.chunks[0]:
            self.chunks.pop(0)
        if not size:
            raise BlockingIOError
        view[:size] = self.data[self.at:self.at + size]
        self.at += size
        self.reads.append(size)
        return size


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 3 * MiB),
       sizes=st.lists(st.integers(4096, MiB), min_size=1, max_size=30),
       allowance=st.integers(4096, 2 * MiB))
def test_a_frame_buffer_follows_the_bytes_and_each_read_is_bounded(length, sizes, allowance):
    data = wire.HEADER.pack(length) + bytes(range(256)) * (length // 256) + b"z" * (length % 256)
    sock = Trickle(data, sizes * (1 + len(data) // max(sum(sizes), 1)))
    reader = frames.FrameReader(4 * MiB)
    done, rounds = False, 0
    while not done and rounds < len(data):
        before, in_header = sock.at, reader.length < 0
        try:
            done = reader.read_from(sock, allowance)
        except BlockingIOError:
            pass
        assert sock.at - before <= allowance + (len(frames._SCRATCH) if in_header else 0)
        got = reader.got        # the stand-in tells nothing of what the kernel holds
        assert reader.capacity <= 2 * (got + max(got >> 3, frames.FIRST_CAPACITY))
        rounds += 1
    assert done and bytes(reader.payload) == data[4:]


def test_an_announced_length_costs_only_the_first_buffer():
    reader = frames.FrameReader(2**32 - 1)
    sock = Trickle(wire.HEADER.pack(2**31) + b"x", [5])
    try:
        reader.read_from(sock)
    except BlockingIOError:
        pass
    assert reader.capacity == frames.FIRST_CAPACITY


def test_a_frame_that_is_all_there_takes_one_buffer_of_its_size():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        payload = os.urandom(150_000)
        theirs.sendall(wire.pack(payload))
        reader = frames.FrameReader(MiB)
        assert not reader.read_from(ours, allowance=0)  # the header, and what came with it
        assert reader.capacity == len(payload), "sized by what the kernel holds"
        assert reader.read_from(ours)
        assert bytes(reader.payload) == payload


def test_the_fd_reserve_pauses_before_the_limit_and_recounts():
    counted = [100]
    fds = FdReserve(40, limit=lambda: 256, count=lambda: counted[0])
    assert fds.open == 100 and not fds.short()
    fds.opened(116)
    assert fds.short()
    fds.closed(1)
    assert not fds.short() and fds.near()
    counted[0] = 300
    fds.recount(now=5.0)
    assert fds.open == 300 and fds.short()
    counted[0] = -1                     # no descriptor left even to list them
    fds.recount(now=5.1, force=True)
    assert fds.short()


def test_a_reserve_never_takes_more_than_half_the_limit():
    assert FdReserve(1000, limit=lambda: 256, count=lambda: 0).reserve == 128


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_throttled_lines_say_how_many_were_left_out(caplog):
    clock = Clock()
    throttled = Throttled(logging.getLogger("test.throttled"), 1.0, clock)
    with caplog.at_level(logging.INFO, "test.throttled"):
        for n in range(500):
            clock.now = n * 0.01
            throttled.log(logging.ERROR, "accept", "accept failed: %d", n)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[0] == "accept failed: 0"
    assert lines[1] == "accept failed: 100 (and 99 more like it in the last 1 s)"


def test_a_guarded_callback_logs_and_goes_on(caplog):
    calls = []

    @guarded
    def callback(n):
        calls.append(n)
        raise RuntimeError("boom %d" % n)

    with caplog.at_level(logging.ERROR, "gaspar2"):
        assert callback(1) is None
        assert callback(2) is None
    assert calls == [1, 2]
    assert "boom 1" in caplog.text and "Traceback" in caplog.text


def test_drops_are_counted_by_reason():
    drops = Drops(Throttled(logging.getLogger("test.drops"), 1.0, Clock()))
    for reason in ["malformed", "sender", "sender", "not_held"]:
        drops.count(reason, "detail")
    assert drops.counts == {"malformed": 1, "sender": 2, "not_held": 1} and drops.total() == 4
