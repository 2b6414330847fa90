"""The remote worker protocol's version in HELLO, against a real producer: a HELLO without
one (the first release's format) joins as version 1; one the producer does not speak is
refused, in its log and in a REFUSED the worker receives."""

import socket
import threading

import pytest
import zmq

from gaspar2 import client
from gaspar2.protocol import wire

from conftest import wait_for

pytestmark = pytest.mark.timeout(60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawWorker:
    """A remote worker written against the specification with pyzmq alone."""

    def __init__(self, ctx, sink, worker_id):
        self.id = worker_id
        self.pull = ctx.socket(zmq.PULL)
        self.pull.linger = 0
        port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % port
        self.push = ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.connect(sink)

    def hello(self, version):
        self.push.send_multipart(wire.encode_hello(self.id, 0, 4242, self.endpoint, b"",
                                                   version))

    def receive(self, timeout_ms=5000):
        assert self.pull.poll(timeout_ms), "nothing from the producer"
        return self.pull.recv_multipart()

    def close(self):
        self.pull.close()
        self.push.close()


@pytest.fixture
def producer(serve):
    port = free_port()
    server = serve("tests.handlers:work", "--workers", "1", "--window", "1",
                   "--remote-workers", "tcp://127.0.0.1:%d" % port, "--heartbeat", "5")
    ctx = zmq.Context()
    yield server, ctx, "tcp://127.0.0.1:%d" % port
    ctx.destroy(linger=0)


def test_a_hello_without_a_version_joins_and_serves(producer, tmp_path):
    server, ctx, sink = producer
    worker = RawWorker(ctx, sink, 2**40 + 1)
    worker.hello(None)
    frames = worker.receive()
    token, _max_reply = wire.decode_welcome(frames)
    worker.push.send(wire.encode_head(wire.HEARTBEAT, worker.id, token))
    server.wait_log("joined from %s" % worker.endpoint)
    # The local worker is kept busy, so the next request can only go to this one.
    mark = tmp_path / "mark"
    holder = threading.Thread(target=client.request, args=(server.url, b"mark:%s:1.5" % (
        str(mark).encode()), 30), daemon=True)
    holder.start()
    wait_for(mark.exists, message="the local worker busy")
    answer = []
    asker = threading.Thread(target=lambda: answer.append(
        client.request(server.url, b"to the raw worker", timeout=30)), daemon=True)
    asker.start()
    batch = wire.decode_batch(worker.receive())
    while not batch:                    # an empty batch is the producer's ping
        batch = wire.decode_batch(worker.receive())
    (_epoch, _seq, request_id, payload, _shared), = batch
    assert bytes(payload) == b"to the raw worker"
    worker.push.send(wire.encode_head(wire.REPLY, worker.id, token, request_id) + b"raw reply")
    asker.join(30)
    assert answer == [b"raw reply"]
    worker.close()


@pytest.mark.parametrize("version", [0, 2, 65535])
def test_a_version_the_producer_does_not_speak_is_refused_and_told(producer, version):
    server, ctx, sink = producer
    worker = RawWorker(ctx, sink, 2**40 + 2)
    worker.hello(version)
    frames = worker.receive()
    assert frames[0] == wire.REFUSED
    versions, reason = wire.decode_refused(frames)
    assert versions == [1]
    assert "protocol version %d" % version in reason
    log = server.wait_log("refused the worker at %s: protocol version %d" % (
        worker.endpoint, version))
    assert "joined from" not in log
    # It cannot join with any token: none was given.
    worker.push.send(wire.encode_head(wire.HEARTBEAT, worker.id, 1))
    server.wait_log("dropped a worker message \\(sender\\)")
    assert "joined from" not in server.log()
    worker.close()
