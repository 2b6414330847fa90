"""Stop signals as docs/reference/signals.rst says: a signal delivered twice (to the
producer and then to its whole process group) counts once; a second one sent after the first
was logged stops at once."""

import concurrent.futures
import os
import shutil
import signal
import time

import pytest

from gaspar2 import client

from conftest import Server, wait_for

pytestmark = pytest.mark.timeout(120)


def start_marked(pool, server, marker, seconds):
    message = "mark:%s:%s" % (marker, seconds)
    future = pool.submit(client.request, server.url, message.encode(), 60)
    wait_for(marker.exists, message="the request running")
    return future


@pytest.mark.skipif(not shutil.which("timeout"), reason="needs coreutils' timeout")
def test_ctrl_c_relayed_by_timeout_to_the_whole_group_drains_once(tmp_path):
    # timeout(1) relays a signal to its child, then to its child's whole process group.
    server = Server("tests.handlers:work", ["-w", "1"], tmp_path / "log",
                    prefix=["timeout", "600"])
    try:
        server.wait_serving()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = start_marked(pool, server, tmp_path / "m", 1)
            os.kill(server.pid, signal.SIGINT)        # to timeout, which relays it twice
            assert running.result().isdigit()         # drained, not reset
        assert server.wait_exit() == 0
        log = server.log()
        assert log.count("SIGINT: stopping gracefully") == 1 and "stopping now" not in log, log
    finally:
        server.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sent_to_the_producer_and_its_group_counts_once(tmp_path, sig):
    server = Server("tests.handlers:work", ["-w", "1"], tmp_path / "log",
                    start_new_session=True)
    try:
        server.wait_serving()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = start_marked(pool, server, tmp_path / "m", 1)
            os.kill(server.pid, sig)
            os.killpg(server.pid, sig)            # one call: every process of the group
            assert running.result().isdigit()
        assert server.wait_exit() == 0
        log = server.log()
        name = signal.Signals(sig).name
        assert log.count("%s: stopping gracefully" % name) == 1 and "stopping now" not in log
    finally:
        server.stop()


def test_a_second_signal_after_the_log_line_stops_at_once(serve, tmp_path):
    server = serve("tests.handlers:work", "-w", "1", "--graceful-timeout", "60")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = start_marked(pool, server, tmp_path / "m", 60)
        began = time.monotonic()
        server.signal(signal.SIGTERM)
        server.wait_log("SIGTERM: stopping gracefully")
        sent = [0]

        def stopped_now():
            # Send again whenever the last one was taken as the same delivery.
            log = server.log()
            if "SIGTERM again: stopping now" in log:
                return True
            if log.count("the same delivery, counted once") == sent[0]:
                sent[0] += 1
                server.signal(signal.SIGTERM)
            return False
        wait_for(stopped_now, interval=0.05, message="stopping now")
        with pytest.raises(client.RequestFailed, match="reset"):
            running.result()
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 30
