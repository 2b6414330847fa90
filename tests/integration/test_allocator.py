"""Workers keep their memory from request to request: a handler that needs a few MiB of
scratch per request faults few pages, whether the producer runs from the command line or
embedded in a program (the fork server fixes glibc's thresholds for the workers it forks;
see process.pin_malloc). Without that, the same handler faulted about 750 pages per
request, 6 MiB of them."""

from __future__ import annotations

import concurrent.futures
import os
import random
import subprocess
import sys

import pytest

from gaspar2 import client
from gaspar2.workers import process

from conftest import ROOT, Server, environment

REQUESTS = 120
BODY = 200_000


def faults(pid):
    """Page faults so far (minor and major) of ``pid``, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[7]) + int(fields[9])


def faults_per_request(server):
    """Serve REQUESTS distinct 200 KB bodies, four at a time, each reply checked against its
    own request; the workers' page faults per request meanwhile (after a warm-up)."""
    rng = random.Random(7)
    bodies = [b"%05d" % n + rng.randbytes(BODY - 5) for n in range(REQUESTS)]

    def ask(body):
        reply = client.request(server.url, body, timeout=30)
        assert reply == b"%d:" % len(body) + body[:32]

    for body in bodies[:8]:
        ask(body)
    pids = server.worker_pids()
    before = {pid: faults(pid) for pid in pids}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(ask, bodies))
    assert server.worker_pids() == pids
    return sum(faults(pid) - before[pid] for pid in pids) / REQUESTS


# A neighbour on the machine that allocates and frees memory of every size, touching it:
# the load under which glibc's moving thresholds sent some workers into faulting their
# scratch in on every request.
CHURN = """
import random, time
rng = random.Random(3)
while True:
    held = [bytearray(rng.randrange(64 << 10, 8 << 20)) for _ in range(8)]
    for block in held:
        block[::4096] = b"x" * len(block[::4096])
    del held
"""


@pytest.mark.parametrize("neighbour", [False, True], ids=["quiet", "beside-a-churning-neighbour"])
def test_workers_of_a_served_producer_fault_few_pages(serve, neighbour):
    server = serve("tests.handlers:scratch", "--workers", "2")
    churn = subprocess.Popen([sys.executable, "-c", CHURN]) if neighbour else None
    try:
        assert faults_per_request(server) < 100
    finally:
        if churn is not None:
            churn.kill()
            churn.wait()


def test_workers_of_an_embedded_producer_fault_few_pages(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "tests", "sizes_app.py"), "tests.handlers:scratch",
           "--workers", "2", "--patch"]
    server = Server(None, None, tmp_path / "server.log", env=environment(), cmd=cmd)
    try:
        server.wait_serving()
        assert faults_per_request(server) < 100
    finally:
        server.stop()


def test_the_environment_decides_when_it_sets_the_thresholds(monkeypatch):
    """glibc reads MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_ at start; those win."""
    for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.setenv(name, "131072")
        assert process.pin_malloc() is False
        monkeypatch.delenv(name)


def test_an_operator_can_keep_glibcs_own_behaviour(serve):
    """The environment's threshold wins end to end: at 128 KiB, the same handler faults
    its scratch in again on every request (which is why workers pin it)."""
    server = serve("tests.handlers:scratch", "--workers", "2",
                   env=environment(MALLOC_MMAP_THRESHOLD_="131072"))
    assert faults_per_request(server) > 500
