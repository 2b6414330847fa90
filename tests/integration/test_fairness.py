"""No request waits behind a slow one while another worker could run it, whatever the slow
one does (sleep, loop in Python, hold the GIL in C, gevent.sleep) and however the producer
runs (``gaspar2 serve``, embedded in a gevent program, embedded under monkey patching);
and every request runs exactly once."""

import collections
import concurrent.futures
import itertools
import math
import os
import re
import sys
import time

import pytest

from gaspar2 import client

from conftest import ROOT, Server, wait_for

pytestmark = pytest.mark.timeout(180)

SLOW = 1.5                   # seconds the slow request runs
MODES = ["serve", "embedded", "patched"]
KINDS = ["sleep", "loop", "regex", "gevent"]
tags = itertools.count()


def regex_letters(seconds):
    """Letters of ``(a+)+$`` backtracking that take about ``seconds`` here: each letter
    doubles the time of that single C call."""
    began = time.perf_counter()
    re.match(rb"(a+)+$", b"a" * 18 + b"b")
    per_18 = time.perf_counter() - began
    return 18 + max(0, round(math.log2(seconds / per_18)))


@pytest.fixture(scope="module", params=MODES)
def server(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    calls = directory / "calls"
    env = dict(os.environ, GASPAR2_CALLS=str(calls), PYTHONPATH=ROOT)
    if request.param == "serve":
        started = Server("tests.handlers:fair", ["--workers", "2"], directory / "log", env=env)
    else:
        cmd = [sys.executable, os.path.join(ROOT, "tests", "embedded_app.py"), "--workers", "2"]
        cmd += ["--patch"] if request.param == "patched" else []
        started = Server(None, [], directory / "log", env=env, cmd=cmd)
    started.wait_serving()
    started.calls = calls
    started.mode = request.param
    yield started
    started.stop()


def ran(server):
    """How often each tag's request ran so far."""
    if not server.calls.exists():
        return collections.Counter()
    return collections.Counter(server.calls.read_bytes().split())


def timed_quick(url):
    tag = b"q%d" % next(tags)
    began = time.monotonic()
    assert client.request(url, b"quick::" + tag, timeout=60) == tag
    return tag, time.monotonic() - began


@pytest.mark.parametrize("kind", KINDS)
def test_quick_requests_pass_a_slow_one(server, kind):
    arg = regex_letters(SLOW) if kind == "regex" else SLOW
    slow_tag = b"slow%d" % next(tags)
    with concurrent.futures.ThreadPoolExecutor(11) as pool:
        slow = pool.submit(client.request, server.url,
                           b"%s:%s:%s" % (kind.encode(), str(arg).encode(), slow_tag), 60)
        wait_for(lambda: slow_tag in ran(server), message="the slow request running")
        quick = []
        for _ in range(5):      # 50 quick requests, in waves of 10
            quick += pool.map(lambda _: timed_quick(server.url), range(10))
        assert not slow.done(), "the slow request must still run: it took %s" % slow
        assert slow.result() == slow_tag
    worst = max(seconds for _, seconds in quick)
    print("%s/%s: worst quick request %.1f ms" % (server.mode, kind, worst * 1000))
    assert worst < 0.5, "a quick request waited %.3f s beside a slow %s" % (worst, kind)
    counts = ran(server)
    assert counts[slow_tag] == 1
    assert all(counts[tag] == 1 for tag, _ in quick), "a request ran twice or never"


def test_the_hub_thread_can_call_its_own_producer(server):
    if server.mode == "serve":
        pytest.skip("only an embedded producer has a hub thread of the caller's")
    assert "self-request answered b'hello-from-the-hub'" in server.wait_log("self-request")


def test_each_request_runs_once_when_workers_are_stuck_all_the_time(server):
    """Slow requests on both workers, quick ones pouring in: many are taken back and sent
    elsewhere, none runs twice, none is lost."""
    slow = [b"slow%d" % next(tags) for _ in range(4)]
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        slow_calls = [pool.submit(client.request, server.url, b"loop:0.3:" + tag, 60)
                      for tag in slow]
        quick = list(pool.map(lambda _: timed_quick(server.url), range(200)))
        assert [f.result() for f in slow_calls] == slow
    counts = ran(server)
    assert all(counts[tag] == 1 for tag in slow + [tag for tag, _ in quick])
