"""A client connection and its one request, as the producer's request path holds it
(see producer/path.py): its socket and watcher, the frame being read, the payload, where it
is on the way, and the reply being written. Runs in the producer process."""

from __future__ import annotations

from typing import Any

from ..protocol.arena import Arena, Region
from .frames import FrameReader


class Connection:
    """One client connection and its single request."""

    __slots__ = ("sock", "peer", "reader", "watcher", "payload", "region", "request_id", "seq",
                 "reply", "since", "accepted", "served_by", "size_in", "size_out", "closed",
                 "held", "holds_reply", "paused_at")

    def __init__(self, sock: Any, peer: Any, max_size: int, now: float,
                 arena: Arena | None = None):
        self.sock = sock
        self.peer = peer
        self.since = now        # the current stage's start: accepted, received, replying
        self.accepted = now
        self.served_by: int | None = None   # the id of the worker that answered
        self.size_in = self.size_out = 0
        self.held = 0           # bytes charged to the budget for it
        self.holds_reply = False
        self.paused_at = 0.0
        self.reader: FrameReader | None = FrameReader(max_size, arena)
        self.watcher: Any = None
        self.payload: Any = None
        self.region: Region | None = None   # the body's place in the arena, if it has one
        self.request_id = 0
        self.seq = 0            # its sequence number at the worker it was sent to
        self.reply: memoryview | None = None
        self.closed = False

    def __str__(self) -> str:
        if isinstance(self.peer, tuple):
            return "%s:%s" % self.peer[:2]
        return str(self.peer)
