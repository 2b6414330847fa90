"""The C worker library (client/c-worker) against real producers: it builds and installs
like the C client, its example passes the conformance kit with and without CURVE, and in a
pool with Python workers a C worker stuck on a slow job holds up no one else."""

import concurrent.futures
import os
import shutil
import subprocess
import threading
import time

import pytest

from gaspar2 import client

from conftest import ROOT, wait_for
from test_conformance import run_kit
from test_remote import Group, free_port

pytestmark = pytest.mark.timeout(180)
SOURCE = os.path.join(ROOT, "client", "c-worker")


def have_libzmq():
    if not (shutil.which("cc") and shutil.which("make") and shutil.which("pkg-config")):
        return False
    return subprocess.run(["pkg-config", "--exists", "libzmq"]).returncode == 0


pytestmark = [pytestmark, pytest.mark.skipif(
    not have_libzmq(), reason="needs cc, make, pkg-config and libzmq's headers "
                              "(Debian: libzmq3-dev)")]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``make install`` into a prefix of its own: the example, the header, the pkg-config
    file and both libraries."""
    root = tmp_path_factory.mktemp("c-worker")
    prefix = root / "prefix"
    subprocess.run(["make", "-C", SOURCE, "install", "BUILD=%s" % (root / "build"),
                    "PREFIX=%s" % prefix], check=True, capture_output=True)
    return prefix


def test_it_installs_with_a_pkg_config_file(installed):
    env = dict(os.environ, PKG_CONFIG_PATH=str(installed / "lib" / "pkgconfig"))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "gaspar2-worker"], env=env,
                           check=True, capture_output=True, text=True).stdout
    assert "-lgaspar2-worker" in flags and str(installed / "include") in flags
    for name in ("include/gaspar2-worker.h", "lib/libgaspar2-worker.a",
                 "lib/libgaspar2-worker.so", "bin/gaspar2-worker-echo"):
        assert (installed / name).exists(), name


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_the_example_passes_the_kit(installed, curve):
    example = str(installed / "bin" / "gaspar2-worker-echo")
    status, verdicts, out = run_kit(*(["--curve"] if curve else []), "--", example,
                                    "{connect}", "{heartbeat}")
    assert status == 0, out
    assert len(verdicts) == (14 if curve else 13) and set(verdicts.values()) == {"pass"}, out


def test_quick_requests_pass_a_c_worker_stuck_on_a_slow_job(installed, serve, tmp_path):
    port = free_port()
    endpoint = "tcp://127.0.0.1:%d" % port
    server = serve("tests.handlers:work", "--workers", "1", "--window", "1",
                   "--remote-workers", endpoint, "--heartbeat", "0.3")
    log = open(tmp_path / "c-worker.log", "wb")    # noqa: SIM115 (closed below)
    c_worker = subprocess.Popen([str(installed / "bin" / "gaspar2-worker-echo"), endpoint,
                                 "0.3"], stdout=log, stderr=subprocess.STDOUT)
    python_group = None
    try:
        server.wait_log("joined from")
        # The local worker busy a moment, so that the slow job can only go to the C worker.
        mark = tmp_path / "mark"
        busy = threading.Thread(target=client.request, args=(
            server.url, b"mark:%s:1" % str(mark).encode(), 30), daemon=True)
        busy.start()
        wait_for(mark.exists, message="the local worker busy")
        slow = concurrent.futures.ThreadPoolExecutor(1).submit(
            client.request, server.url, b"gaspar2-conformance:sleep:5", 30)
        wait_for(lambda: server.status()["at_workers"] == 2, message="the slow job at C")
        python_group = Group(endpoint, None, None, tmp_path / "group.log", workers=1)
        wait_for(lambda: server.log().count("joined from") == 2, message="a Python worker")
        busy.join(30)
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            payloads = [b"quick %d" % i for i in range(40)]
            replies = list(pool.map(lambda p: client.request(server.url, p, 10), payloads))
        took = time.monotonic() - started
        assert replies == payloads
        assert not slow.done(), "the slow job ended before the quick ones were timed"
        assert took < 2.5, "40 quick requests took %.2f s beside the slow job" % took
        assert slow.result(30) == b"gaspar2-conformance:sleep:5"
    finally:
        if python_group is not None:
            python_group.stop()
        c_worker.terminate()
        c_worker.wait(10)
        log.close()
