"""The shared arena's bookkeeping, and frames read into it: no process, no server."""

import itertools
import socket
import struct

import pytest
from hypothesis import given, settings, strategies as st

from gaspar2.frontend.frames import FrameReader
from gaspar2.protocol.arena import GRAIN, REF, Arena, place
from gaspar2.protocol.wire import pack


def check(arena, regions):
    """Free ranges sorted, apart and merged; with the regions held, they cover the arena."""
    spans = sorted([(r.offset, r.capacity) for r in regions] + list(arena.free))
    at = 0
    for offset, length in spans:
        assert offset == at, "a gap or an overlap at %d" % offset
        at = offset + length
    assert at == arena.size
    assert arena.used == sum(r.capacity for r in regions)
    for (a, alen), (b, _) in itertools.pairwise(arena.free):
        assert a + alen < b, "free neighbours not merged"


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.integers(1, 6 * GRAIN)), max_size=60))
def test_regions_never_overlap_and_free_space_merges(steps):
    arena = Arena(32 * GRAIN, threshold=1)
    held = []
    for allocate, size in steps:
        if allocate:
            region = arena.region(size)
            if region is not None:
                assert region.capacity >= size and region.capacity % GRAIN == 0
                held.append(region)
        elif held:
            region = held.pop(size % len(held))
            region.drop_client()
        check(arena, held)
    for region in held:
        region.drop_client()
    assert arena.free == [(0, arena.size)] and arena.used == 0


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from("aaarrt"), st.integers(1, 6 * GRAIN)),
                      max_size=60))
def test_what_may_be_resident_is_every_grain_used_since_the_last_trim(steps):
    """``resident`` counts the grains regions covered since they were last trimmed, each
    once however often reused; a trim leaves exactly what is in use."""
    arena = Arena(32 * GRAIN, threshold=1)
    held, touched = [], set()
    for step, size in steps:
        if step == "a":
            region = arena.region(size)
            if region is not None:
                held.append(region)
                touched.update(range(region.offset // GRAIN,
                                     (region.offset + region.capacity) // GRAIN))
        elif step == "r" and held:
            held.pop(size % len(held)).drop_client()
        elif step == "t":
            arena.trim()
            touched = {g for r in held for g in range(r.offset // GRAIN,
                                                        (r.offset + r.capacity) // GRAIN)}
            assert arena.resident == arena.used
        assert arena.resident == len(touched) * GRAIN >= arena.used
        assert arena.idle_resident == arena.resident - arena.used


def test_a_trimmed_region_is_handed_back_and_one_in_use_is_kept():
    arena = Arena(4 * GRAIN, threshold=1)
    kept, freed = arena.region(GRAIN), arena.region(GRAIN)
    kept.view()[:] = b"k" * GRAIN
    freed.view()[:] = b"f" * GRAIN
    freed.drop_client()
    assert arena.idle_resident == GRAIN
    arena.trim()
    assert arena.idle_resident == 0
    assert bytes(arena.view[GRAIN:2 * GRAIN]) == bytes(GRAIN), "its pages were handed back"
    assert bytes(kept.view()) == b"k" * GRAIN


def test_a_region_is_free_only_once_client_and_worker_let_go():
    arena = Arena(4 * GRAIN, threshold=1)
    region = arena.region(10)
    region.worker = True
    region.drop_client()
    assert arena.used == GRAIN, "a worker still holds it"
    region.drop_worker()
    assert arena.used == 0
    region.drop_worker()
    region.drop_client()
    assert arena.used == 0 and arena.free == [(0, arena.size)], "never freed twice"


def test_no_room_is_none_not_an_error():
    arena = Arena(2 * GRAIN, threshold=1)
    first = arena.region(GRAIN + 1)
    assert first is not None and arena.region(1) is None
    first.drop_client()
    assert arena.region(2 * GRAIN) is not None


def test_a_ref_must_lie_in_the_arena():
    arena = Arena(4 * GRAIN, threshold=1)
    region = arena.region(100)
    assert place(arena.view, region.ref()) == (region.offset, 100, GRAIN)
    for forged in (REF.pack(3 * GRAIN, 2 * GRAIN, 10), REF.pack(0, 10, 11), b"short"):
        with pytest.raises(ValueError):
            place(arena.view, forged)


def read_in_pieces(reader, pieces):
    """Send each piece whole, reading as it goes; whether the frame is whole at the end."""
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    with ours, theirs:
        done = False
        for piece in pieces:
            view = memoryview(piece)
            while view:
                try:
                    view = view[theirs.send(view):]
                except BlockingIOError:
                    pass
                done = read_some(reader, ours) or done
        return done or read_some(reader, ours)


def read_some(reader, sock):
    try:
        return reader.read_from(sock)
    except BlockingIOError:
        return False


@pytest.mark.parametrize("first", [8, 200_000, 700_000])
def test_a_large_body_lands_in_the_arena_once_half_of_it_is_in(first):
    arena = Arena(64 * GRAIN, threshold=100_000)
    body = bytes(range(256)) * 4096           # 1 MiB
    frame = pack(body)
    reader = FrameReader(len(body), arena)
    assert read_in_pieces(reader, [frame[:first], frame[first:]])
    assert reader.payload is reader.region and bytes(reader.region.view()) == body
    assert arena.used == reader.region.capacity


def test_small_bodies_and_a_full_arena_stay_in_memory():
    arena = Arena(2 * GRAIN, threshold=1000)
    small = FrameReader(1 << 20, arena)
    assert read_in_pieces(small, [pack(b"x" * 999)]) and small.payload == b"x" * 999
    big = FrameReader(1 << 20, arena)
    assert read_in_pieces(big, [pack(b"y" * 300_000)])
    assert big.region is None and bytes(big.payload) == b"y" * 300_000 and arena.used == 0


def test_a_frame_cut_short_gives_its_region_back():
    arena = Arena(32 * GRAIN, threshold=1000)
    reader = FrameReader(1 << 20, arena)
    assert not read_in_pieces(reader, [struct.pack("!I", 500_000) + b"z" * 400_000])
    assert arena.used > 0
    reader.close()
    assert arena.used == 0
