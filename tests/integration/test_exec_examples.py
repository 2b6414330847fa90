"""The worker examples of examples/workers/ (C, Node.js, Ruby, Perl), run as README.rst's
"Workers in any language" says, each behind a real server: replies byte for byte at 0 B,
100 B, 1 MiB and max_message_size, and a request the program fails that leaves it
serving. A missing toolchain skips its language, saying why."""

import os
import shutil
import subprocess
import sys

import pytest

from gaspar2 import client

from conftest import ROOT, Server, children, wait_for

pytestmark = pytest.mark.timeout(120)

EXAMPLES = os.path.join(ROOT, "examples", "workers")
MAX = 2 * 2**20
# language: (tools it needs, build command or None, the --exec line), as the README has them
LANGUAGES = {
    "c": (("cc",), "cc -O2 -o echo-worker echo-worker.c", "./echo-worker"),
    "node": (("node",), None, "node echo-worker.js"),
    "ruby": (("ruby",), None, "ruby echo-worker.rb"),
    "perl": (("perl",), None, "perl echo-worker.pl"),
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """One server per language whose toolchain is here, started side by side, each in a
    copy of examples/workers/; or the reason it is missing."""
    started = {}
    for language, (tools, build, line) in LANGUAGES.items():
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            started[language] = "%s not found on PATH" % ", ".join(missing)
            continue
        directory = tmp_path_factory.mktemp(language) / "workers"
        shutil.copytree(EXAMPLES, directory)
        if build:
            subprocess.run(build.split(), cwd=directory, check=True, timeout=120)
        cmd = [sys.executable, "-m", "gaspar2", "serve", "--exec", line, "--workers", "1",
               "--max-message-size", "2MiB", "--port", "0"]
        started[language] = Server(None, (), directory / "server.log", cmd=cmd, cwd=directory)
    for server in started.values():
        if not isinstance(server, str):
            server.wait_serving()
    yield started
    for server in started.values():
        if not isinstance(server, str):
            server.stop()


def test_the_readme_shows_each_example_as_the_tests_run_it():
    with open(os.path.join(ROOT, "README.rst")) as f:
        readme = f.read()
    for _, build, line in LANGUAGES.values():
        assert "gaspar2 serve --exec '%s'" % line in readme
        assert build is None or build in readme


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_an_example_worker_answers_byte_for_byte_and_fails_one_request_alone(servers, language):
    server = servers[language]
    if isinstance(server, str):
        pytest.skip(server)
    (worker,) = server.worker_pids()
    (child,) = wait_for(lambda: children(worker), message="the example running")
    bodies = [b"", os.urandom(100), os.urandom(2**20), os.urandom(MAX)]
    bodies = [body.replace(b"fail", b"FAIL") for body in bodies]
    for body in bodies:
        reply = client.request(server.url, body, timeout=30)
        assert len(reply) == len(body) and reply == body
    with pytest.raises(client.RequestReset):
        client.request(server.url, b"fail this one", timeout=30)
    server.wait_log(r"handler failed in worker 1 \(pid \d+\):\n"
                    r"this example fails requests that start with 'fail'")
    assert client.request(server.url, b"and serve on", timeout=30) == b"and serve on"
    assert children(worker) == [child], "the same program served on"
