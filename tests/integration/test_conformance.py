"""The conformance kit against ``gaspar2 worker`` (it passes, with and without CURVE) and
against deliberately broken workers (each fails the checks it should, and only those)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.timeout(180)

PYTHON_WORKER = [sys.executable, "-m", "gaspar2", "worker", "gaspar2.conformance:handle",
                 "--connect", "{connect}", "--listen", "127.0.0.1", "--heartbeat",
                 "{heartbeat}", "--workers", "1"]
CURVE_ARGS = ["--curve-secret-key", "{secret_key_file}", "--curve-server-key",
              "{server_key_file}"]
ALL = {"joins", "echo 0 B", "echo 100 B", "echo 1 MiB", "echo max", "handler error",
       "malformed batch", "heartbeats", "counted gone", "producer restart", "sigkill",
       "only held", "well-formed"}


def run_kit(*args, timeout=150):
    """The kit's exit status, and each check's verdict by name."""
    done = subprocess.run([sys.executable, "-m", "gaspar2.conformance", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    verdicts = {}
    for line in done.stdout.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("pass", "FAIL"):
            verdicts[rest.split(" (")[0].split(":")[0]] = verdict
    return done.returncode, verdicts, done.stdout


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_gaspar2_worker_passes_the_kit(curve):
    args = ["--curve", "--", *PYTHON_WORKER, *CURVE_ARGS] if curve else ["--", *PYTHON_WORKER]
    status, verdicts, out = run_kit(*args)
    assert status == 0, out
    assert set(verdicts) == ALL | ({"unknown key"} if curve else set()), out
    assert set(verdicts.values()) == {"pass"}, out


@pytest.mark.parametrize("mode, failing", [
    ("silent", {"heartbeats"}),
    ("not-held", {"only held"}),
    ("bad-head", {"handler error", "well-formed"}),
])
def test_a_broken_worker_fails_its_checks_and_only_those(mode, failing):
    status, verdicts, out = run_kit("--timeout", "3", "--", sys.executable,
                                    os.path.join(ROOT, "tests", "broken_worker.py"), mode,
                                    "{connect}", "{heartbeat}")
    assert status == 1, out
    assert set(verdicts) == ALL, out
    assert {name for name, verdict in verdicts.items() if verdict == "FAIL"} == failing, out


def test_the_kit_cannot_run_without_a_command():
    status, _, _ = run_kit(timeout=30)
    assert status == 2
