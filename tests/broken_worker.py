"""``gaspar2 worker``, deliberately broken one way, for showing that the conformance kit
fails what it should: ``python tests/broken_worker.py MODE --connect ENDPOINT --heartbeat S``.

MODE: ``silent`` sends the heartbeat that completes its join and no other; ``not-held``
also answers, after each reply, a request it does not hold; ``bad-head`` sends its
errors with a head of a kind that does not exist.
"""

import sys
import time

from gaspar2.protocol import wire
from gaspar2.workers import group


class Silent(group.RemoteWorker):
    def _beat(self):
        while True:
            welcomed = self.welcomed.acquire(True, self.heartbeat)
            if welcomed and self.token:     # the join's heartbeat, and no other
                self.watch_push.send(self._head(wire.HEARTBEAT))
            if time.monotonic() - self.contact > wire.MISSED_BEATS * self.heartbeat:
                self._hello()


class NotHeld(group.RemoteWorker):
    def _reply(self, request_id, body):
        super()._reply(request_id, body)
        self.push.send(self._head(wire.REPLY, request_id + 1000) + b"not mine")


class BadHead(group.RemoteWorker):
    def _fail(self, request_id, text):
        self.push.send(b"e" + self._head(wire.ERROR, request_id)[1:] + text.encode())


MODES = {"silent": Silent, "not-held": NotHeld, "bad-head": BadHead}


def main(mode, connect, heartbeat):
    group.RemoteWorker = MODES[mode]
    return group.serve_group("gaspar2.conformance:handle", connect, 1, "127.0.0.1", None, None,
                             None, float(heartbeat))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
