"""Handlers that never return are never silent: each hung request is logged once, with its
worker, its age and the worker's stack (taken without the worker's help, even from C code
that holds the GIL); /healthz and a gauge say when every worker is stuck and requests wait.
Against a real server, with real workers."""

import json
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from gaspar2 import client

from conftest import wait_for

pytestmark = pytest.mark.timeout(120)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    """(status, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stuck_gauge(base):
    text = get(base + "/metrics")[1].decode()
    return float(re.search(r"^gaspar2_workers_stuck (\S+)$", text, re.M).group(1))


class Call(threading.Thread):
    """One request in a thread of its own: ``outcome`` is the reply, or the exception."""

    def __init__(self, url, message):
        super().__init__(daemon=True)
        self.url, self.message, self.outcome = url, message, None
        self.start()

    def run(self):
        try:
            self.outcome = client.request(self.url, self.message, timeout=60)
        except Exception as exc:
            self.outcome = exc


def hung_line(log, function):
    """The report of the request whose stack names ``function``: (worker, pid, request,
    age, the whole record)."""
    pattern = (r"worker (\d+) \(pid (\d+)\) has run request (\d+) from 127\.0\.0\.1:\d+ "
               r"for ([\d.]+) s, past warn_after \(0\.5 s\); its stack:\n"
               r"(?:(?!\d{4}-\d\d-\d\d ).*\n)*?.* in %s\n" % function)    # within the record
    match = re.search(pattern, log)
    return match and (int(match.group(1)), int(match.group(2)), int(match.group(3)),
                      float(match.group(4)), match.group(0))


def test_hung_handlers_are_logged_with_their_stack_and_healthz_tells_when_all_are(serve,
                                                                                  tmp_path):
    base = "http://127.0.0.1:%d" % free_port()
    server = serve("tests.handlers:hang", "-w", "2", "--warn-after", "0.5", "--metrics",
                   base[7:], "--graceful-timeout", "1")
    looping, matching = tmp_path / "loop", tmp_path / "regex"

    # One worker loops in Python for good: the other serves a normal client throughout.
    loop_call = Call(server.url, b"loop:%s" % str(looping).encode())
    wait_for(looping.exists, message="the loop running")
    latencies = []

    def normal_client_and_report():
        began = time.monotonic()
        assert client.request(server.url, b"normal", timeout=10) == b"normal"
        latencies.append(time.monotonic() - began)
        return hung_line(server.log(), "spin_in_python")
    worker, pid, request, age, _ = wait_for(normal_client_and_report, 20,
                                            message="the loop's report")
    assert pid == int(looping.read_text()) and age >= 0.5     # printed to 0.1 s
    assert max(latencies) < 5 and len(latencies) > 1
    assert get(base + "/healthz")[0] == 200     # a worker is free
    wait_for(lambda: stuck_gauge(base) == 1, 10, message="one worker stuck")

    # The other worker runs one regex that never ends, inside one C call holding the GIL;
    # a normal request then has no worker and waits.
    regex_call = Call(server.url, b"regex:%s" % str(matching).encode())
    wait_for(matching.exists, message="the regex running")
    waiting_call = Call(server.url, b"waited")

    def unhealthy():
        status, body = get(base + "/healthz")
        return status == 503 and json.loads(body)
    body = wait_for(unhealthy, 20, message="/healthz failing")
    assert body["workers"] == 2 and body["workers_stuck"] == 2 and body["waiting"] >= 1
    assert "every worker has run one request past warn_after" in body["reason"]
    assert stuck_gauge(base) == 2
    regex_worker, regex_pid, _, regex_age, record = wait_for(
        lambda: hung_line(server.log(), "spin_in_regex"), 20, message="the regex's report")
    assert regex_pid == int(matching.read_text()) != pid and regex_worker != worker
    assert regex_age >= 0.5 and re.search(r"re/__init__\.py\", line \d+ in match\n", record)

    # Killed, the regex's worker is replaced: the waiting request is served, health is back.
    os.kill(regex_pid, signal.SIGKILL)
    regex_call.join(30)
    assert isinstance(regex_call.outcome, client.RequestReset)
    waiting_call.join(30)
    assert waiting_call.outcome == b"waited"
    wait_for(lambda: get(base + "/healthz")[0] == 200, 10, message="/healthz passing")

    # Finished, the loop frees its worker: nothing is stuck any more.
    looping.unlink()
    loop_call.join(30)
    assert loop_call.outcome == str(pid).encode()
    wait_for(lambda: stuck_gauge(base) == 0, 10, message="no worker stuck")
    assert client.request(server.url, b"after", timeout=10) == b"after"
    # Each hung request was reported once, though it stayed hung for many sweeps.
    assert server.log().count("has run request %d " % request) == 1
    assert server.log().count(" in spin_in_regex\n") == 1
