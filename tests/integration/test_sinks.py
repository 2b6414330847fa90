"""Attacks on the remote-workers endpoint, as an attacker on loopback would make them: real
producers, real worker groups, a real ZeroMQ PUSH socket for the attacker."""

import concurrent.futures
import os
import random
import re
import socket
import struct
import threading

import pytest
import zmq
import zmq.auth

from gaspar2 import client
from gaspar2.protocol import wire

from conftest import Server, wait_for
from test_remote import Group, free_port, groups, keys, pids_serving  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(120)
HEARTBEAT = "0.3"
FORGED = b"FORGED"


@pytest.fixture
def plain_groups(tmp_path):
    started = []

    def start(endpoint, workers=2):
        group = Group(endpoint, None, None, log_path=tmp_path / ("group%d.log" % len(started)),
                      workers=workers)
        started.append(group)
        return group

    yield start
    for group in started:
        group.stop()


@pytest.fixture
def attacker():
    ctx = zmq.Context()
    sockets = []

    def connect(endpoint, **options):
        push = ctx.socket(zmq.PUSH)
        push.linger = 2000
        for name, value in options.items():
            setattr(push, name, value)
        push.connect(endpoint)
        sockets.append(push)
        return push

    yield connect
    for sock in sockets:
        sock.close()
    ctx.term()


def serve_plain_remote(serve, *extra):
    port = free_port()
    server = serve("tests.handlers:work", "--workers", "2", "--remote-workers",
                   "tcp://127.0.0.1:%d" % port, "--heartbeat", HEARTBEAT, *extra)
    return server, "tcp://127.0.0.1:%d" % port


def still_serving(server, start_group, endpoint):
    """Local workers serve, a dead one is replaced, and a new group joins and serves."""
    before = server.worker_pids()
    assert pids_serving(server, 4) <= set(before)
    os.kill(before[0], 9)
    server.wait_workers(2, exclude=[before[0]])
    joined = server.log().count("joined from")
    group = start_group(endpoint)
    wait_for(lambda: server.log().count("joined from") == joined + 2, message="a new group")
    remote = set(wait_for(lambda: len(group.pids()) == 2 and group.pids()))
    assert pids_serving(server) & remote


def test_malformed_messages_and_random_bytes_stop_nothing(serve, plain_groups, attacker):
    server, endpoint = serve_plain_remote(serve)
    push = attacker(endpoint)
    reply = wire.encode_head(wire.REPLY, 1, 0, 1)
    bad = [[reply]] * 3 + [[b"H"], [b""], [reply, b"a", b"b"], [reply + b"x", b"b"],
                           [b"G" + bytes(24), b"123"],
                           [wire.encode_head(wire.HELLO, 2**40, 0, 1), b"tcp://x", b"k"]]
    rng = random.Random(3)
    bad += [[rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 4))]
            for _ in range(300)]
    for frames in bad:
        push.send_multipart(frames)
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", int(endpoint.rpartition(":")[2]))) as sock:
            sock.sendall(os.urandom(rng.randint(1, 512)))
    wait_for(lambda: server.status()["dropped"] >= 9, message="the malformed messages dropped")
    assert "error in" not in server.log() and "Traceback" not in server.log()
    still_serving(server, plain_groups, endpoint)


def sweep_forgeries(push, worker_ids, done, stop, tokens):
    """Forge REPLYs for the request ids around those in flight (ids are sequential), for
    every worker id, until ``stop``; a short pause between sweeps leaves the clients CPU."""
    rng = random.Random(1)
    while not stop.is_set():
        for request_id in range(max(1, len(done) - 20), len(done) + 40):
            for worker_id in worker_ids:
                push.send_multipart([wire.encode_head(wire.REPLY, worker_id, tokens(rng),
                                                      request_id), FORGED])
        stop.wait(0.002)


def requests_under_forgery(server, push, worker_ids, count, tokens):
    stop, done = threading.Event(), []

    def one(n):
        reply = client.request(server.url, b"echo %d" % n, timeout=30)
        done.append(n)
        return reply

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        forger = pool.submit(sweep_forgeries, push, worker_ids, done, stop, tokens)
        replies = list(pool.map(one, range(count)))
        stop.set()
        forger.result()
    assert replies == [b"echo %d" % n for n in range(count)], "a forged reply got through"
    wait_for(lambda: server.status()["dropped"] > 0, message="forgeries dropped")


def test_forged_replies_reach_no_client(serve, attacker):
    server, endpoint = serve_plain_remote(serve)
    requests_under_forgery(server, attacker(endpoint), (1, 2, 3, 4), 1000,
                           lambda rng: rng.choice([0, 1, rng.getrandbits(64)]))


def test_forgeries_on_the_local_sink_are_dropped_and_replies_stay_their_own(serve):
    """A handler that sends, on its worker's own socket to the producer, REPLYs with a wrong
    token or naming a remote worker, a REPLY in two frames, cut heads and random bytes: each
    is dropped and counted, no client gets a reply not its own, the loop logs no error."""
    server = serve("tests.handlers:forge_on_the_sink", "--workers", "2")

    def one(n):
        body = b"forge" if n % 10 == 0 else b"echo %d" % n
        return body, client.request(server.url, body, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(one, range(200)))
    for body, reply in replies:
        assert reply == (b"forged" if body == b"forge" else body)
    forged_per_call = 2 * 199 + 1 + wire.HEADS[wire.REPLY].size - 1
    wait_for(lambda: server.status()["dropped"] >= 20 * forged_per_call,
             message="every forgery dropped")
    assert "error acting" not in server.log() and "Traceback" not in server.log()
    assert client.request(server.url, b"after", timeout=30) == b"after"


def test_forged_givebacks_neither_wedge_workers_nor_run_requests_twice(serve, attacker, tmp_path):
    server, endpoint = serve_plain_remote(serve)
    push = attacker(endpoint)
    counts = tmp_path / "runs"
    stop = threading.Event()

    def forge():
        """Give-backs as workers once sent them (the producer now takes back what a stuck
        worker holds by itself): kind, worker id, token, the request it is stuck on."""
        rng = random.Random(2)
        while not stop.is_set():
            ids = [rng.randint(1, 60) for _ in range(rng.randint(0, 5))]
            head = b"G" + struct.pack("!QQQ", rng.choice([1, 2]), rng.choice([0, 1]),
                                      rng.randint(1, 60))
            push.send_multipart([head, struct.pack("!%dQ" % len(ids), *ids)])

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        forger = pool.submit(forge)
        replies = list(pool.map(
            lambda n: client.request(server.url, b"count:%s:r%d" % (str(counts).encode(), n), 30),
            range(20)))
        stop.set()
        forger.result()
    assert replies == [b"r%d" % n for n in range(20)]
    assert len(counts.read_text().split()) == 20, "a request ran twice"
    status = wait_for(lambda: (lambda s: s if s["at_workers"] == 0 else None)(server.status()))
    assert status["waiting"] == 0 and status["workers"] == 2
    assert client.request(server.url, b"after", timeout=30) == b"after"


def test_a_hello_flood_is_capped_and_joined_workers_are_refreshed(serve, plain_groups, attacker):
    server, endpoint = serve_plain_remote(serve, "--max-remote-workers", "8")
    files = server.status()["open_files"]
    push = attacker(endpoint)
    dead = "tcp://127.0.0.1:%d" % free_port()
    rng = random.Random(4)
    for _ in range(1000):
        head = wire.encode_head(wire.HELLO, rng.randrange(2**32, 2**63), 0, 1)
        push.send_multipart([head, dead.encode(), b""])
    # One connection has one handshake under way at a time: the rest are refused.
    wait_for(lambda: "while its first is in a handshake" in server.log(), message="the cap")
    assert server.status()["open_files"] < files + 8 * 3 + 16
    # The same HELLO again and again: one member, one socket.
    head = wire.encode_head(wire.HELLO, 2**40 + 1, 0, 1)
    for _ in range(200):
        push.send_multipart([head, dead.encode(), b""])
    assert server.status()["open_files"] < files + 8 * 3 + 16
    assert "joined from" not in server.log()        # no fake HELLO could complete a join
    old = server.worker_pids()
    server.signal(1)                                  # SIGHUP: every local worker replaced
    server.wait_workers(2, exclude=old)
    still_serving(server, plain_groups, endpoint)


def test_an_authorized_key_cannot_answer_for_another(serve, groups, keys, attacker):  # noqa: F811
    """With CURVE, an authorized key that forges replies for another member gets nothing."""
    port = free_port()
    endpoint = "tcp://127.0.0.1:%d" % port
    server = serve("tests.handlers:work", "--workers", "1", "--remote-workers", endpoint,
                   "--curve-secret-key", str(keys / "producer.key_secret"),
                   "--curve-authorized", str(keys / "workers"), "--heartbeat", HEARTBEAT)
    groups(endpoint, keys / "workers" / "w1.key_secret", keys / "producer.key")
    wait_for(lambda: server.log().count("joined from") == 2, message="2 remote workers")
    members = [int(m, 16) for m in re.findall(r"remote worker ([0-9a-f]+) \(remote", server.log())]
    public, secret = zmq.auth.load_certificate(str(keys / "workers" / "w2.key_secret"))
    server_key, _ = zmq.auth.load_certificate(str(keys / "producer.key"))
    push = attacker(endpoint, curve_publickey=public, curve_secretkey=secret,
                    curve_serverkey=server_key)
    requests_under_forgery(server, push, [*members, 1], 300, lambda rng: rng.getrandbits(64))


@pytest.mark.parametrize("given", ["--curve-secret-key", "--curve-authorized"])
def test_curve_needs_both_keys(tmp_path, keys, given):  # noqa: F811
    path = keys / "producer.key_secret" if given == "--curve-secret-key" else keys / "workers"
    server = Server("tests.handlers:work", ["--workers", "1", "--remote-workers",
                                            "tcp://127.0.0.1:%d" % free_port(), given, str(path)],
                    tmp_path / "log")
    assert server.wait_exit() == 1
    assert "CURVE needs both --curve-secret-key and --curve-authorized" in server.log()
    server.stop()


def test_malformed_batches_pushed_to_a_remote_worker_are_dropped(serve, plain_groups, attacker):
    """A remote worker's own endpoint, without CURVE, takes pushes from anyone: a batch that
    does not decode is dropped and logged, and the worker serves on."""
    server, endpoint = serve_plain_remote(serve, "--workers", "1")
    group = plain_groups(endpoint, workers=1)
    joined = wait_for(lambda: re.search(r"joined from (tcp://\S+)", server.log()),
                      message="the remote worker joined")
    pids = wait_for(lambda: len(group.pids()) == 1 and group.pids())
    push = attacker(joined.group(1))
    fixed = wire.BATCH_FIXED
    whole = wire.encode_batch([7], [b"payload"], 0, 1)
    bad = [[b"xx"], [fixed.pack(b"B", 0, 1, 5)], [fixed.pack(b"B", 0, 1, 2**32 - 1)],
           [fixed.pack(b"B", 0, 1, 1) + struct.pack("!QI", 7, 99) + b"short"],
           [b"short", b"payload"], [whole, b"one payload"], [whole[:-1]],
           [whole[:-3] + wire.encode_batch([], [], 0, 9)[-3:]], [b"X" + whole[1:]]]
    for frames in bad:
        push.send_multipart(frames)
    wait_for(lambda: group.log_path.read_text().count("dropped a malformed batch") == len(bad),
             message="every malformed batch dropped")
    assert group.pids() == pids
    assert set(pids) <= pids_serving(server)
