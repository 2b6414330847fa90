"""The progress table's claim: every request runs once, whichever of the worker's claim and
the producer's take-back comes first (progress.py)."""

import time

import pytest
from hypothesis import given, strategies as st

from gaspar2.protocol.progress import ProgressTable


def test_a_take_back_waits_while_the_worker_holds_the_slot():
    table = ProgressTable(4)
    slot = table.allocate()
    lock = table.locks[slot]
    assert lock.acquire(False), "a fresh slot's semaphore is free"
    try:
        assert table.revoke(slot) is None, "the producer only tries, and never blocks"
    finally:
        lock.release()
    assert table.revoke(slot) == 0


def test_the_semaphore_cannot_be_released_twice():
    table = ProgressTable(2)
    slot = table.allocate()
    assert table.claim(slot, 0, 1, 7, time.monotonic())
    with pytest.raises(ValueError):
        table.locks[slot].release()


def test_each_slot_has_its_own_semaphore():
    table = ProgressTable(4)
    first, second = table.allocate(), table.allocate()
    assert table.locks[first].acquire(False)
    try:
        assert table.revoke(second) == 0
        assert table.claim(second, 1, 1, 9, time.monotonic())
    finally:
        table.locks[first].release()


@given(st.lists(st.sampled_from(["claim", "revoke"]), max_size=40))
def test_a_request_runs_once_whatever_the_order(steps):
    """Requests are sent in sequence under the epoch they were sent with; after any mix of
    claims and take-backs, what the producer took back was never claimed, and what it
    did not take back was."""
    table = ProgressTable(2)
    slot = table.allocate()
    epoch, next_seq, sent = 0, 1, []        # sent: (epoch, seq) the worker has not tried
    claimed, taken_back = set(), set()
    for step in steps:
        if step == "claim":
            if not sent:
                sent.append((epoch, next_seq))
                next_seq += 1
            sent_epoch, seq = sent.pop(0)
            ran = table.claim(slot, sent_epoch, seq, seq, time.monotonic())
            assert ran == (sent_epoch == epoch), "only what was not taken back runs"
            if ran:
                claimed.add(seq)
        else:
            sent.append((epoch, next_seq))
            next_seq += 1
            last = table.revoke(slot)
            assert last is not None
            taken_back |= {seq for e, seq in sent if e == epoch and seq > last}
            epoch += 1
    assert not claimed & taken_back
