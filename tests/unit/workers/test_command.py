"""The pure logic of a handler that is a program (gaspar2/workers/command.py): the answers
it reads, the command line, $WID, the stderr lines and their budget. No process runs here."""

import itertools
import os
import re
import shlex
import struct
import sys

import pytest
from hypothesis import given, strategies as st

from gaspar2 import settings
from gaspar2.workers.command import (
    ANSWER,
    CROWDED_SKIP,
    FAILURE,
    FIRST_GROWTH,
    REPLY,
    AnswerReader,
    AwakeWaits,
    BadAnswer,
    Command,
    LineBudget,
    Lines,
    describe_exit,
    problem,
    split,
    substitute,
)


def read(data, limit, cuts):
    """Feed ``data`` to a reader as a pipe would deliver it, cut at ``cuts``: through
    ``into`` once the head is known, as the worker reads. (reader, bytes used)."""
    reader = AnswerReader(limit)
    used = 0
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        chunk = memoryview(data)[start:end]
        while len(chunk) and not reader.done:
            target = reader.into()
            if target is None:
                taken = reader.feed(chunk)
            else:
                taken = min(len(target), len(chunk))
                target[:taken] = chunk[:taken]
                reader.filled(taken)
            used += taken
            chunk = chunk[taken:]
        if reader.done:
            break
    return reader, used


def answer(kind, body):
    return ANSWER.pack(kind, len(body)) + body


@given(st.sampled_from([REPLY, FAILURE]), st.binary(max_size=3000), st.binary(max_size=50),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=8))
def test_a_valid_answer_comes_out_whole_however_it_is_cut_and_nothing_after_it_is_taken(
        kind, body, after, cuts):
    data = answer(kind, body) + after
    reader, used = read(data, 3000, cuts)
    assert reader.done and reader.kind == kind and bytes(reader.body) == body
    assert used == len(data) - len(after)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=300), max_size=6),
       st.one_of(st.none(), st.integers(min_value=0, max_value=100)))
def test_any_bytes_are_an_answer_the_bytes_say_or_refused_or_incomplete(data, cuts, limit):
    """Whatever a child writes, the worker never crashes and never makes up a reply."""
    try:
        reader, used = read(data, limit, cuts)
    except BadAnswer:
        assert len(data) >= 5
        kind, length = struct.unpack("!BI", data[:5])
        assert kind not in (0, 1) or (limit is not None and length > limit)
        return
    if reader.done:
        kind, length = struct.unpack("!BI", data[:5])
        assert (reader.kind, bytes(reader.body)) == (kind, data[5:5 + length])
        assert used == 5 + length
    else:
        assert used == len(data)        # waiting for more: a short read is never an answer


@given(st.binary(min_size=1, max_size=500))
def test_a_truncated_answer_is_never_done(body):
    data = answer(REPLY, body)
    for end in range(len(data)):
        reader, _ = read(data[:end], None, [])
        assert not reader.done


def test_what_is_refused_and_why():
    with pytest.raises(BadAnswer, match=r"starts with 0 or 1, not b'Hello'"):
        read(b"Hello there\n", None, [])
    with pytest.raises(BadAnswer, match="an answer of 101 bytes, over max_reply_size 100"):
        read(ANSWER.pack(REPLY, 101), 100, [])
    with pytest.raises(BadAnswer, match="over max_reply_size"):
        read(ANSWER.pack(FAILURE, 101), 100, [])
    reader, used = read(ANSWER.pack(REPLY, 100), 100, [])
    assert not reader.done and used == 5
    reader, _ = read(ANSWER.pack(REPLY, 0), 0, [])
    assert reader.done and reader.body == b""


def test_a_command_line_is_split_as_a_shell_splits_it_with_nothing_expanded():
    assert split("resize --size '64 64' \"a b\" c\\ d $WID ~ *") == \
        ["resize", "--size", "64 64", "a b", "c d", "$WID", "~", "*"]
    for line in ("", "   ", "'unbalanced"):
        with pytest.raises(ValueError):
            split(line)


@given(st.lists(st.text(), min_size=1, max_size=5))
def test_split_takes_back_what_a_shell_quoted(words):
    words = [w.replace("\x00", "") for w in words]
    assert split(shlex.join(words)) == words


@given(st.lists(st.text(), max_size=5), st.integers(min_value=0, max_value=2**64))
def test_wid_is_replaced_and_nothing_else(words, worker_id):
    replaced = substitute(words, worker_id)
    for before, after in zip(words, replaced, strict=True):
        assert after == re.sub(r"\$(?:WID\b|\{WID\})", str(worker_id), before)
        if "$WID" not in before and "${WID}" not in before:
            assert after == before


def test_wid_forms():
    assert substitute(["--cache=/tmp/c-$WID", "${WID}x", "$WIDTH", "$WID_2", "$$WID"], 7) == \
        ["--cache=/tmp/c-7", "7x", "$WIDTH", "$WID_2", "$7"]


@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(min_value=1, max_value=16))
def test_stderr_lines_come_out_as_written_however_the_reads_cut_them(chunks, longest):
    lines = Lines(longest)
    out = []
    for chunk in chunks:
        out += lines.feed(chunk)
    out += lines.rest()
    data = b"".join(chunks)
    expected = []
    for line in (data[:-1] if data.endswith(b"\n") else data).split(b"\n") if data else []:
        pieces = [line[i:i + longest] for i in range(0, len(line), longest)] or [b""]
        expected += pieces
    assert out == expected
    assert all(len(line) <= longest for line in out)


def test_the_line_budget_counts_what_it_leaves_out_and_says_so_next_second():
    now = [100.0]
    budget = LineBudget(3, clock=lambda: now[0])
    assert [budget.take() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] += 0.5
    assert budget.take() == (False, 0)
    now[0] += 0.6
    assert budget.take() == (True, 3)
    assert budget.take() == (True, 0)


def test_what_cannot_start_is_named(tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert problem("./script", cwd=str(tmp_path)) == "not an executable file: ./script"
    assert problem("./missing", cwd=str(tmp_path)) == "no such file: ./missing"
    assert problem("./", cwd=str(tmp_path)) == "not an executable file: ./"
    os.chmod(script, 0o755)
    assert problem("./script", cwd=str(tmp_path)) is None
    assert problem("script", env={"PATH": str(tmp_path)}) is None
    assert problem("script", env={"PATH": "/nonexistent"}) == \
        "no program named 'script' on PATH"
    assert problem(sys.executable) is None
    assert Command("no-such-program-x --a").problem() == \
        "no program named 'no-such-program-x' on PATH"


def test_a_command_names_itself_by_its_line():
    assert str(Command(["resize", "--size", "64 64"])) == "resize --size '64 64'"
    assert Command("resize --size '64 64'").argv == ["resize", "--size", "64 64"]
    with pytest.raises(ValueError):
        Command([])


def test_exit_statuses_read_as_the_log_says_them():
    assert describe_exit(3 << 8) == "exited with status 3"
    assert describe_exit(11) == "was killed by SIGSEGV"


def test_the_exec_setting_takes_a_line_or_a_list_and_refuses_nothing_to_run():
    assert settings.command_line("a 'b c'") == "a 'b c'"
    assert settings.command_line(["a", "b c"]) == "a 'b c'"
    for bad in ("", "'open", []):
        with pytest.raises(ValueError):
            settings.command_line(bad)
    assert settings.resolve({"exec": ["prog", "$WID"]}).exec == "prog '$WID'"


def test_an_announced_length_costs_nothing_until_its_bytes_come():
    """A child that announces 400 MB and sends ten bytes makes its worker hold about ten."""
    reader = AnswerReader(None)
    head = ANSWER.pack(REPLY, 400_000_000)
    assert reader.feed(head + b"0123456789") == len(head) + 10
    assert len(reader.body) == 10 and not reader.done
    view = reader.into()
    assert view is not None and len(view) <= 2 * FIRST_GROWTH
    view.release()


@given(st.lists(st.booleans(), max_size=300))
def test_awake_waits_back_off_after_misses_and_start_over_on_a_catch(outcomes):
    """Each look that is allowed either catches its answer (True) or misses (False)."""
    waits, asleep, after_miss = AwakeWaits(), 0, 1
    looks = iter(outcomes)
    for _ in range(len(outcomes) * (CROWDED_SKIP + 1)):
        if asleep:
            assert not waits.allowed()
            asleep -= 1
            continue
        assert waits.allowed()
        caught = next(looks, None)
        if caught is None:
            break
        if caught:
            waits.caught()
            after_miss = 1
        else:
            waits.missed()
            asleep, after_miss = after_miss, min(2 * after_miss, CROWDED_SKIP)


def test_a_slow_program_costs_one_look_in_sixty_five_requests():
    waits = AwakeWaits()
    allowed = []
    for _ in range(1000):
        allowed.append(waits.allowed())
        if allowed[-1]:
            waits.missed()
    assert allowed[:8] == [True, False, True, False, False, True, False, False]
    steady = allowed[500:]
    gaps = [b - a for a, b in itertools.pairwise(i for i, ok in enumerate(steady) if ok)]
    assert gaps and set(gaps) == {CROWDED_SKIP + 1}
