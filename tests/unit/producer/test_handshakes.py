"""The remote endpoint's pure rules: the table of handshakes under way, which endpoints a
HELLO may name, and how a message is bounded as a whole while it is read."""

import ipaddress

import pytest
import zmq
from hypothesis import given, settings, strategies as st

from gaspar2.guard import Throttled
from gaspar2.producer import members
from gaspar2.producer.members import BoundedReader, Handshakes, parse_endpoint, refusal
from gaspar2.protocol import wire

# -- the handshakes under way -----------------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["start", "complete", "expire"]),
                         st.integers(0, 20),        # worker id
                         st.integers(0, 5),         # source connection
                         st.integers(0, 5),         # endpoint
                         st.floats(0, 3)),          # time passing first
               max_size=80)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_handshakes_stay_bounded_one_per_connection_and_expire(steps):
    table = Handshakes(limit=4, timeout=2.0, refuse_first=10.0, refuse_most=40.0, remembered=6)
    now = 0.0
    for op, worker_id, source, endpoint, elapsed in steps:
        now += elapsed
        address = ("127.0.0.1", 1000 + endpoint)
        if op == "start":
            if table.get(worker_id) is None and table.refusal(source, address, now) is None:
                table.start(worker_id, source, address, now, worker_id)
        elif op == "complete":
            entry = table.items.get(worker_id)
            if entry is not None:
                assert table.complete(worker_id) == worker_id
                assert entry[1] not in table.failed     # in good standing again
        else:
            for gone, refused, item in table.expire(now):
                assert 10.0 <= refused <= 40.0
                assert table.refusal(99, gone, now).startswith("an endpoint whose last")
                assert table.get(item) is None
            assert all(now - entry[2] < 2.0 for entry in table.items.values())
        assert len(table) <= 4
        sources = [entry[0] for entry in table.items.values()]
        assert len(sources) == len(set(sources)), "two handshakes from one connection"


def test_endpoints_given_up_are_remembered_up_to_a_bound_the_oldest_forgotten():
    table = Handshakes(limit=100, timeout=1.0, remembered=3)
    for port in range(5):
        table.start(port, port, ("10.0.0.1", port + 1), 0.0, port)
    assert len(table.expire(1.0)) == 5
    assert list(table.failed) == [("10.0.0.1", 3), ("10.0.0.1", 4), ("10.0.0.1", 5)]
    assert table.refusal(9, ("10.0.0.1", 1), 1.0) is None


def test_a_given_up_endpoint_is_refused_twice_as_long_each_time_until_one_completes():
    table = Handshakes(limit=8, timeout=2.0, refuse_first=30.0, refuse_most=100.0)
    address = ("10.0.0.1", 5000)
    now, waits = 0.0, []
    for worker_id in range(4):
        assert table.refusal(worker_id, address, now) is None
        table.start(worker_id, worker_id, address, now, worker_id)
        now += 2.0
        ((_, refused, _),) = table.expire(now)
        waits.append(refused)
        assert table.refusal(7, address, now + refused - 0.1) is not None
        now += refused
    assert waits == [30.0, 60.0, 100.0, 100.0]
    table.start(9, 9, address, now, 9)
    assert table.complete(9) == 9
    assert address not in table.failed


def test_handshakes_are_bounded_on_their_own_and_one_per_connection():
    table = Handshakes(limit=2)
    table.start(1, 10, ("10.0.0.1", 1), 0.0, "a")
    assert "second HELLO from one connection" in table.refusal(10, ("10.0.0.2", 1), 0.0)
    table.start(2, 11, ("10.0.0.2", 1), 0.0, "b")
    assert "2 handshakes are under way" in table.refusal(12, ("10.0.0.3", 1), 0.0)
    assert table.cancel(1) == "a"
    assert table.refusal(10, ("10.0.0.3", 1), 0.0) is None


# -- which endpoints a HELLO may name ---------------------------------------------------------

addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@given(addresses, st.integers(1, 65535))
def test_numeric_endpoints_parse_to_their_address(ip, port):
    host = "[%s]" % ip if ip.version == 6 else str(ip)
    parsed = parse_endpoint("tcp://%s:%d" % (host, port))
    expected = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip
    assert parsed == (str(expected), port)


@given(st.text(max_size=40))
def test_anything_else_is_not_an_endpoint(text):
    parsed = parse_endpoint(text)
    if parsed is not None:
        assert text.startswith("tcp://") and text.isprintable()
        ipaddress.ip_address(parsed[0])
        assert 0 < parsed[1] < 65536


@pytest.mark.parametrize("endpoint", [
    "tcp://localhost:5555", "tcp://example.com:80", "ipc:///tmp/x", "inproc://x",
    "udp://127.0.0.1:5", "tcp://127.0.0.1:0", "tcp://127.0.0.1:65536", "tcp://127.0.0.1:",
    "tcp://::1:5555", "tcp://*:5555", "tcp://127.0.0.1:5555\n", "tcp://127.0.0.1:+55",
    "tcp://127.0.0.1:0005555", "tcp://[fe80::1%\neth0]:5",
])
def test_names_and_other_schemes_are_refused(endpoint):
    assert parse_endpoint(endpoint) is None


@given(addresses, st.integers(1, 65535))
def test_own_addresses_are_refused(ip, port):
    host = str(ip)
    assert refusal((host, port), [(host, port)], lambda h: False) is not None
    assert refusal((host, port), [(host, port % 65535 + 1)], lambda h: False) in (
        None, "a wildcard, broadcast or multicast address")


@given(addresses, st.integers(1, 65535), st.booleans())
def test_a_wildcard_listener_is_reached_through_every_local_address(ip, port, local):
    why = refusal((str(ip), port), [("0.0.0.0", port)], lambda h: local)
    if ip.is_unspecified or ip.is_multicast or str(ip) == "255.255.255.255":
        assert why == "a wildcard, broadcast or multicast address"
    else:
        assert (why is not None) == local


def test_wildcards_broadcast_and_multicast_are_refused():
    for host in ("0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"):
        assert refusal((host, 80), [], lambda h: False) is not None
    assert refusal(("10.1.2.3", 80), [("127.0.0.1", 80)], lambda h: False) is None


def test_loopback_is_local_and_a_foreign_address_is_not():
    assert members.is_local("127.0.0.5")
    assert not members.is_local("192.0.2.1")        # TEST-NET-1: never a local address


# -- a message bounded as a whole -------------------------------------------------------------

@pytest.fixture
def pair():
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    pull.bind("inproc://bounded")
    push.connect("inproc://bounded")
    yield push, pull
    push.close(0)
    pull.close(0)
    ctx.term()


def test_a_message_past_the_bounds_is_thrown_away_a_slice_per_look(pair, monkeypatch):
    monkeypatch.setattr(members, "DISCARD_SLICE", 100)
    push, pull = pair
    reader = BoundedReader(pull, 1000, Throttled(members.log))
    push.send_multipart([b""] * 450)
    push.send_multipart([b"x" * 600, b"y" * 600])     # three frames' worth: over 1000 bytes
    push.send_multipart([b"a", b"b"])
    looks = 0
    kept, bad = [], 0
    while True:
        reader.look()
        looks += 1
        while True:
            try:
                frames = reader.read()
            except wire.BadMessage:
                bad += 1
                continue
            if frames is None:
                break
            kept.append([f.bytes for f in frames])
            assert reader.left >= -wire.MAX_FRAMES
        if not reader.discarding and not pull.poll(0):
            break
    assert bad == 2
    assert kept == [[b"a", b"b"]]
    assert looks == 5                 # 450 frames, 100 a look
    assert reader.trim is False       # short messages: nothing to hand back


@settings(max_examples=30)
@given(st.lists(st.integers(0, 400), min_size=1, max_size=6))
def test_messages_within_the_bounds_come_whole(sizes):
    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    try:
        pull.bind("inproc://whole")
        push.connect("inproc://whole")
        reader = BoundedReader(pull, 1000, Throttled(members.log))
        push.send_multipart([b"z" * n for n in sizes])
        pull.poll(1000)
        reader.look()
        within = len(sizes) <= wire.MAX_FRAMES and sum(sizes) <= 1000
        try:
            frames = reader.read()
        except wire.BadMessage:
            assert not within
            while reader.discarding:
                reader.look()
                reader.read()
        else:
            assert within and [len(f) for f in frames] == sizes
        assert not pull.poll(0)
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
