"""Who may answer what: the request path's sender and holder checks, and remote joins,
driven by plain objects (its writes and resets recorded, stand-ins for sockets). No socket,
no process."""

import gevent
import zmq
from hypothesis import given, settings, strategies as st

from gaspar2 import settings as options
from gaspar2.producer.dispatch import Seat
from gaspar2.producer.members import RemoteMembers
from gaspar2.producer.path import RequestPath
from gaspar2.protocol import wire
from gaspar2.protocol.progress import ProgressTable
from gaspar2.protocol.wire import REMOTE_ID_MIN

KEY_A, KEY_B = "A" * 40, "B" * 40


class Owner:
    def workers_ready(self): pass
    def worker_gone(self, description): pass
    def forkserver_gone(self): pass
    def idle(self): pass


class Front:
    """Records the replies the request path writes and the requests it fails."""

    def __init__(self):
        self.answers, self.conns = [], set()

    def reply(self, conn, body):
        self.answers.append((conn.request_id, bytes(body)))

    def fail(self, conn, outcome, reason, *args):
        self.answers.append((conn.request_id, outcome))


class Request:
    region = None

    def __init__(self, request_id):
        self.request_id, self.payload, self.closed = request_id, b"p", False
        self.size_in = len(self.payload)


class Push:
    def __init__(self):
        self.sent = []

    def send(self, data, flags=0, copy=True):
        self.sent.append(bytes(data))

    def close(self):
        pass


class Sink:
    def __init__(self, curve):
        self.curve, self.fds, self.address = curve, None, ("127.0.0.1", 1)

    def connect_worker(self, ctx, endpoint, key):
        return Push()


def pipeline(remote_curve=None):
    pipe = RequestPath(Owner(), options.resolve({"workers": 2}), gevent.get_hub().loop,
                       ProgressTable(4))
    pipe.frontend = Front()
    pipe._write, pipe.fail = pipe.frontend.reply, pipe.frontend.fail
    pipe.schedule = []
    for worker_id in (1, 2):
        pipe.dispatcher.add(Seat(worker_id, lambda requests: None, 8))
    if remote_curve is not None:
        pipe.remote = RemoteMembers(pipe, None, Sink(remote_curve), heartbeat=1.0, max_workers=4)
    return pipe


def hold(pipe, worker_id, request_id):
    pipe.dispatcher.seats[worker_id].held[request_id] = Request(request_id)


def message(kind, worker_id, token, field, body=b"body"):
    frames = [zmq.Frame(wire.encode_head(kind, worker_id, token, field)), zmq.Frame(body)]
    return wire.decode(frames)


def join(pipe, worker_id, key=KEY_A, user_id=KEY_A):
    head = wire.encode_head(wire.HELLO, worker_id, 0, 99)
    hello = wire.decode([zmq.Frame(head), zmq.Frame(b"tcp://10.0.0.1:%d" % (worker_id % 60000 + 1)),
                         zmq.Frame(key.encode())])
    pipe._act_on(hello, False, user_id)
    member = pipe.remote.handshakes.get(worker_id)
    beat = wire.decode([zmq.Frame(wire.encode_head(wire.HEARTBEAT, worker_id, member.token))])
    pipe._act_on(beat, False, user_id)
    return member


def test_a_local_answer_needs_the_local_token_and_the_holder():
    pipe = pipeline()
    hold(pipe, 1, 10)
    pipe._act_on(message(wire.REPLY, 1, 12345, 10, b"forged"), True, None)
    pipe._act_on(message(wire.REPLY, 2, pipe.local_token, 10, b"forged"), True, None)
    assert pipe.frontend.answers == []
    assert pipe.drops.counts == {"malformed": 0, "sender": 1, "not_held": 1}
    pipe._act_on(message(wire.REPLY, 1, pipe.local_token, 10, b"real"), True, None)
    assert pipe.frontend.answers == [(10, b"real")]


def test_a_remote_worker_joins_only_once_it_answers_its_welcome():
    pipe = pipeline(remote_curve=False)
    worker_id = REMOTE_ID_MIN + 5
    head = wire.encode_head(wire.HELLO, worker_id, 0, 99)
    hello = wire.decode([zmq.Frame(head), zmq.Frame(b"tcp://10.0.0.1:1"), zmq.Frame(b"")])
    pipe._act_on(hello, False, None)
    member = pipe.remote.handshakes.get(worker_id)
    assert not member.joined and worker_id not in pipe.dispatcher.seats
    assert not pipe.remote.members                      # joining holds no seat
    assert wire.decode_welcome([wire.WELCOME, member.push.sent[-1]])[0] == member.token
    pipe._act_on(hello, False, None)                    # again: the same member, welcomed again
    assert len(pipe.remote.handshakes) == 1 and len(member.push.sent) == 4
    wrong = wire.decode([zmq.Frame(wire.encode_head(wire.HEARTBEAT, worker_id, member.token ^ 1))])
    pipe._act_on(wrong, False, None)
    assert not member.joined
    right = wire.decode([zmq.Frame(wire.encode_head(wire.HEARTBEAT, worker_id, member.token))])
    pipe._act_on(right, False, None)
    assert member.joined and worker_id in pipe.dispatcher.seats


def test_remote_ids_cannot_be_local_ones_and_joins_are_capped():
    pipe = pipeline(remote_curve=False)
    head = wire.encode_head(wire.HELLO, 1, 0, 99)
    pipe._act_on(wire.decode([zmq.Frame(head), zmq.Frame(b"tcp://10.0.0.1:1"), zmq.Frame(b"")]),
                 False, None)
    assert not pipe.remote.members and not len(pipe.remote.handshakes)
    for n in range(10):
        if len(pipe.remote.members) < 4:
            join(pipe, REMOTE_ID_MIN + n, "", None)
        else:
            head = wire.encode_head(wire.HELLO, REMOTE_ID_MIN + n, 0, 99)
            pipe._act_on(wire.decode([zmq.Frame(head), zmq.Frame(b"tcp://10.0.0.2:%d" % (n + 1)),
                                      zmq.Frame(b"")]), False, None)
    assert len(pipe.remote.members) == 4 and not len(pipe.remote.handshakes)


def test_with_curve_a_member_speaks_only_from_the_key_it_joined_with():
    pipe = pipeline(remote_curve=True)
    member = join(pipe, REMOTE_ID_MIN + 1)
    assert member.joined
    hold(pipe, member.id, 10)
    pipe._act_on(message(wire.REPLY, member.id, member.token, 10, b"forged"), False, KEY_B)
    assert pipe.frontend.answers == []
    pipe._act_on(message(wire.REPLY, member.id, member.token, 10, b"real"), False, KEY_A)
    assert pipe.frontend.answers == [(10, b"real")]
    head = wire.encode_head(wire.HELLO, REMOTE_ID_MIN + 2, 0, 99)
    lying = [zmq.Frame(head), zmq.Frame(b"tcp://10.0.0.1:2"), zmq.Frame(KEY_A.encode())]
    pipe._act_on(wire.decode(lying), False, KEY_B)      # claims a key it did not use
    assert REMOTE_ID_MIN + 2 not in pipe.remote.members
    assert pipe.remote.handshakes.get(REMOTE_ID_MIN + 2) is None


senders = st.sampled_from(["local", "local_forged", "remote", "remote_forged", "remote_other"])


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(senders, st.sampled_from([1, 2, "r"]), st.integers(1, 8)),
                       max_size=60))
def test_only_the_holder_answers_and_only_once(events):
    pipe = pipeline(remote_curve=True)
    member = join(pipe, REMOTE_ID_MIN + 1)
    holders = {}
    for request_id in range(1, 9):
        worker_id = [1, 2, member.id][request_id % 3]
        hold(pipe, worker_id, request_id)
        holders[request_id] = worker_id
    answered = []
    for sender, named, request_id in events:
        worker_id = member.id if named == "r" else named
        local = sender.startswith("local")
        token = {"local": pipe.local_token, "local_forged": pipe.local_token ^ 1,
                 "remote": member.token, "remote_forged": member.token ^ 1,
                 "remote_other": member.token}[sender]
        user_id = None if local else (KEY_B if sender == "remote_other" else KEY_A)
        before = len(pipe.frontend.answers)
        pipe._act_on(message(wire.REPLY, worker_id, token, request_id), local, user_id)
        if len(pipe.frontend.answers) > before:
            genuine = (sender == "local" and named != "r") or (sender == "remote" and named == "r")
            assert genuine and holders[request_id] == worker_id
            answered.append(request_id)
    assert len(answered) == len(set(answered))
