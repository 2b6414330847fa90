"""The producer process: its lifecycle, the request path from a client's frame to its
reply, dispatch, the ZeroMQ transport to workers, remote members, metrics and systemd."""

from .lifecycle import Producer, WorkerBootError

__all__ = ["Producer", "WorkerBootError"]
