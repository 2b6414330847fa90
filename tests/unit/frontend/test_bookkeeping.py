"""The bookkeeping behind the bounds: memory budget, paused readers, growing frame buffers,
the file-descriptor reserve, throttled logs and the callback guard. No socket but
in-memory stand-ins, no process."""

import logging
import os
import socket

from hypothesis import given, settings, strategies as st

from gaspar2.frontend import frames
from gaspar2.frontend.budget import Budget, Readers
from gaspar2.frontend.fds import FdReserve
from gaspar2.guard import Drops, Throttled, guarded
from gaspar2.protocol import wire

MiB = 2**20


def test_a_reply_costs_what_replies_to_its_size_class_were_beyond_its_own_bytes():
    budget = Budget(256 * MiB)
    assert budget.cost(100) == 0 and budget.cost(8 * MiB) == 0, "nothing seen: nothing planned"
    budget.reply_seen(8 * MiB, 8 * MiB)         # an echo of 8 MiB
    budget.reply_seen(12, 8 * MiB)              # a small request with a large reply
    budget.reply_seen(100, 100)                 # a small echo
    assert budget.cost(8 * MiB) == 0 and budget.cost(12 * MiB) == 0, "larger than its reply"
    assert budget.cost(8 * MiB - 1) == 0, "another size class, where nothing was seen"
    assert budget.cost(13) == 8 * MiB - 13, "the same size class as the 12-byte request"
    assert budget.cost(100) == 0 and budget.cost(64) == 100 - 64
    assert budget.expected > 4 * MiB and not budget.far_from_limit()


def test_the_expected_reply_follows_a_large_one_at_once_and_decays():
    budget = Budget(256 * MiB)
    budget.reply_seen(10, 8 * MiB)
    assert budget.expected == 8 * MiB and budget.cost(10) == 8 * MiB - 10
    for _ in range(100):
        budget.reply_seen(10, 10)
    assert budget.expected < 10 * 1024 and budget.cost(10) < 10 * 1024
    assert budget.far_from_limit()


def test_the_budget_counts_replies_apart_and_knows_when_to_trim():
    budget = Budget(100)
    budget.change(80)
    budget.change(20, reply=True)
    assert budget.used == 100 and budget.replies == 20 and budget.peak == 100
    budget.change(-90)
    budget.change(-10, reply=True)
    assert budget.worth_trimming(50) and budget.used == 0
    budget.trimmed()
    assert not budget.worth_trimming(0)


class Conn:
    def __init__(self, n, held=0):
        self.n = n
        self.held = held

    def __repr__(self):
        return "c%d" % self.n


def test_the_oldest_reader_reads_on_while_everything_else_fits_and_others_wait():
    budget = Budget(4 * MiB)
    assert budget.limit - 4 * MiB // 8 == budget.bulk, "an eighth kept for small requests"
    settled = [False]
    readers = Readers(budget, lambda: settled[0])
    conns = [Conn(n) for n in range(4)]
    for conn in conns:
        readers.reading[conn] = None
    assert readers.allowance(conns[2]) == frames.READ_SLICE
    budget.change(budget.bulk - 100)
    assert readers.allowance(conns[2]) == 100
    budget.change(100)
    assert readers.allowance(conns[2]) <= 0
    assert readers.allowance(conns[0]) == frames.READ_SLICE, "the oldest reads past the bulk"
    conns[0].held = 3 * MiB
    budget.change(3 * MiB)
    assert readers.allowance(conns[0]) == frames.READ_SLICE, "the rest fits: it reads on"
    budget.change(1)
    assert readers.allowance(conns[0]) <= 0, "the rest is past the bulk: it waits too"
    settled[0] = True
    assert readers.allowance(conns[0]) > 0, "unless only frames being read hold memory"
    budget.change(-3 * MiB - 1)
    readers.paused[conns[1]] = None
    readers.paused[conns[2]] = None
    assert readers.forget(conns[3]) is None
    assert readers.forget(conns[0]) is conns[1], "the new oldest is resumed"
    assert list(readers.paused) == [conns[2]]


@settings(max_examples=300)
@given(limit=st.integers(MiB, 64 * MiB), frames_=st.lists(st.integers(1, 16 * MiB), max_size=40),
       events=st.lists(st.tuples(st.integers(0, 39), st.booleans()), max_size=400))
def test_readers_hold_at_most_the_limit_and_one_frame_and_always_move(limit, frames_, events):
    """Whatever the order readers read and requests finish in, what is held stays under the
    limit plus one frame (every frame here is at most 16 MiB), and some frame can always
    be read or some request finish: nothing waits forever."""
    budget = Budget(limit)
    done = []           # read whole, holding their bytes until "answered"
    readers = Readers(budget, lambda: not done)
    conns = [Conn(n) for n in range(len(frames_))]
    lengths = dict(zip(conns, frames_, strict=True))
    for conn in conns:
        readers.reading[conn] = None
    for index, answer in events:
        if answer and done:
            conn = done.pop(index % len(done))
            budget.change(-conn.held)
            conn.held = 0
            continue
        if not readers.reading:
            continue
        assert done or any(readers.allowance(c) > 0 for c in readers.reading), "deadlock"
        conn = list(readers.reading)[index % len(readers.reading)]
        step = min(max(readers.allowance(conn), 0), frames.READ_SLICE,
                   lengths[conn] - conn.held)
        budget.change(step)
        conn.held += step
        if conn.held == lengths[conn]:
            readers.forget(conn)
            done.append(conn)
        else:
            readers.owes(conn, lengths[conn] - conn.held)
        assert budget.used <= budget.bulk + 16 * MiB
        assert readers.owed == sum(readers.owing.values())


def test_frames_announced_past_the_free_budget_grow_in_the_order_they_came():
    """Many uploads at once: a younger frame reads only what the older ones leave, so the
    budget goes to frames that complete instead of to many halves."""
    budget = Budget(40 * MiB)
    readers = Readers(budget, lambda: False)
    conns = [Conn(n, held=MiB) for n in range(4)]
    budget.change(4 * MiB)
    for conn in conns:
        readers.reading[conn] = None
        readers.owes(conn, 16 * MiB)
    free = budget.bulk - budget.used
    assert readers.owed == 64 * MiB > free == 32 * MiB
    assert readers.allowance(conns[0]) == free, "the oldest takes what it finds"
    assert readers.allowance(conns[1]) == free - 16 * MiB, "the next what the oldest leaves"
    assert readers.allowance(conns[2]) <= 0 and readers.allowance(conns[3]) <= 0
    assert readers.allowance(Conn(9)) <= 0, "one not announced yet waits behind them all"
    readers.owes(conns[0], 0)
    assert readers.owed == 48 * MiB and readers.allowance(conns[2]) == free - 16 * MiB
    for conn in conns[1:]:
        readers.paused[conn] = None
    assert readers.to_resume() == conns[1:3], "resumed in order, while the budget lasts"
    readers.forget(conns[1])
    readers.forget(conns[2])
    assert readers.owed == 16 * MiB <= free
    assert readers.allowance(conns[3]) == frames.READ_SLICE, "all fit: all read freely"


def test_resuming_follows_the_free_budget_in_order():
    budget = Budget(10 * MiB)
    readers = Readers(budget, lambda: False)
    conns = [Conn(n, held=1) for n in range(8)]
    for conn in conns:
        readers.reading[conn] = readers.paused[conn] = None
    budget.change(budget.bulk + 2)
    assert readers.to_resume() == []
    budget.change(-1)
    assert readers.to_resume() == [conns[0]], "the oldest, whose rest fits"
    budget.change(-1)
    budget.change(-3 * MiB)
    assert readers.to_resume() == conns[1:4]
    budget.change(-7 * MiB)
    assert readers.to_resume() == conns[4:]


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
        assert not reader.read_from(ours, allowance=1)  # the header, and what came with it
        assert reader.capacity == len(payload), "sized by what the kernel holds"
        assert reader.read_from(ours)
        assert bytes(reader.payload) == payload


def test_past_the_budget_a_first_read_holds_only_what_came():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        payload = os.urandom(150_000)
        theirs.sendall(wire.pack(payload))
        reader = frames.FrameReader(MiB)
        assert not reader.read_from(ours, allowance=-5, room=0)
        assert reader.capacity == reader.got
        assert reader.capacity < len(payload)
        while not reader.read_from(ours):
            pass
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


@given(body=st.sampled_from([0, 1, frames.FIRST_READ - 5, frames.FIRST_READ - 4,
                             frames.FIRST_READ - 3, frames.FIRST_READ, 2 * frames.FIRST_READ]),
       cut=st.integers(0, 8))
def test_past_the_budget_only_a_frame_come_whole_in_one_read_is_taken(body, cut):
    """Either side of the first read's size (its header counts), and with bytes still to
    come: a frame is read past the budget only when all of it is there and fits one read."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        data = wire.pack(b"b" * body)
        sent = data[:len(data) - cut] if cut < len(data) else data[:0]
        theirs.sendall(sent)
        reader = frames.FrameReader(4 * MiB)
        whole = len(sent) == len(data) and len(data) <= frames.FIRST_READ
        if not sent:
            assert reader.arrived_whole(ours), "nothing there: the read will tell"
        else:
            assert reader.arrived_whole(ours) == whole
        assert frames.available(ours) == len(sent), "a look takes nothing"
