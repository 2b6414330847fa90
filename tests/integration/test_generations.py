"""Which code serves: a generation reads the app from disk once, a respawn runs what its
generation read, only a HUP puts new code into service, and storms of HUP, TTIN and TTOU
end with the wanted workers, all running the newest code. Real servers, real processes."""

import os
import random
import re
import signal
import time

import pytest

from gaspar2 import client

from conftest import alive, environment, wait_for

pytestmark = pytest.mark.timeout(120)

# The app as deployed: its module-level VERSION says which deploy a worker's code came from.
APP = """import os, time
VERSION = {version!r}

class App:
    def __init__(self):
        time.sleep({setup})          # a setup() that takes a while: workers start slowly

    def __call__(self, message):
        return "%s %d" % (VERSION, os.getpid())

handle = App()
"""


def deploy(path, version, setup=0.0):
    """Replace the app's file at once, as a deploy by rename does."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(APP.format(version=version, setup=setup))
    os.replace(fresh, path)


def answers(server, count):
    """(version, pid) of ``count`` replies."""
    replies = (client.request(server.url, b"which", timeout=30).decode() for _ in range(count))
    return [(version, int(pid)) for version, pid in (r.split() for r in replies)]


def serve_app(serve, tmp_path, name, *args):
    # No bytecode cache: two deploys within a second, of the same size, must not share one.
    return serve("%s:handle" % name, *args, cwd=tmp_path,
                 env=environment(PYTHONDONTWRITEBYTECODE="1"))


def test_a_respawn_runs_its_generations_code_and_only_a_hup_loads_new_code(serve, tmp_path):
    app = tmp_path / "deployed.py"
    deploy(app, "v1")
    server = serve_app(serve, tmp_path, "deployed", "--workers", "1", "--max-requests", "4")
    assert {v for v, _ in answers(server, 2)} == {"v1"}
    deploy(app, "v2")                               # on disk, not deployed: no HUP
    (victim,) = server.worker_pids()
    os.kill(victim, signal.SIGKILL)                 # a crash, then max_requests, respawn it
    seen = answers(server, 10)
    assert len({pid for _, pid in seen}) >= 3, "a respawn after the crash and max_requests"
    assert {v for v, _ in seen} == {"v1"}, "a respawn loaded code nobody deployed"
    # A HUP onto code that cannot be imported is given up: respawns go on with v1.
    app.write_text("def handle(message)\n    return b'broken'\n")
    server.signal(signal.SIGHUP)
    server.wait_log("reload failed")
    seen = answers(server, 10)
    assert {v for v, _ in seen} == {"v1"} and len({pid for _, pid in seen}) >= 2
    assert server.log().count("SyntaxError") == 1, "the failed import is logged once"
    deploy(app, "v3")
    server.signal(signal.SIGHUP)
    wait_for(lambda: answers(server, 1) == [("v3", server.worker_pids()[0])],
             message="the code the HUP loaded, alone")
    assert {v for v, _ in answers(server, 6)} == {"v3"}
    # Old generations' preloaders are gone with their last worker: the fork server, one
    # preloader and its worker are left.
    wait_for(lambda: len(server.preloaders()) == 1 and len(server.descendants()) == 3,
             message="no preloader of an old generation left")
    assert len(re.findall(r"generation \d+ cannot start: importing the app failed",
                          server.log())) == 1


def wanted(server):
    counts = re.findall(r"now (\d+) workers? wanted", server.log())
    return int(counts[-1]) if counts else 2


def test_a_storm_of_mixed_signals_converges_to_the_newest_code(serve, tmp_path):
    app = tmp_path / "stormy.py"
    deploy(app, "v0", setup=0.2)
    server = serve_app(serve, tmp_path, "stormy", "--workers", "2")
    rng = random.Random(25)
    hups = 0
    for _ in range(60):
        name = rng.choice(["HUP", "TTIN", "TTOU"])
        if name == "HUP":
            hups += 1
            deploy(app, "v%d" % hups, setup=0.2)   # each reload has code of its own
        server.signal(getattr(signal, "SIG" + name))
        time.sleep(rng.uniform(0, 0.08))            # the storm's own rhythm, not a wait
    server.status()
    server.status()         # its signal came after the storm's: every one has been handled
    newest = "v%d" % hups

    def converged():
        workers = server.worker_pids()
        return (len(workers) == wanted(server) and len(server.preloaders()) == 1
                and server.status()["workers"] == len(workers) and workers)
    workers = wait_for(converged, timeout=20, interval=0.1,
                       message="%d workers of one generation" % wanted(server))
    seen = answers(server, 300)
    assert {v for v, _ in seen} == {newest}, "a worker of an older generation served"
    assert {pid for _, pid in seen} <= set(workers)
    assert sorted(server.worker_pids()) == sorted(workers)
    live = [p for p in server.descendants() if alive(p)]
    assert len(live) == wanted(server) + 2, "the fork server, one preloader, the workers"
