"""The user's side of gaspar2: what runs in each worker process, and how it is found."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

Reply = bytes | bytearray | memoryview | str
Handler = Callable[[bytes], Reply]


class Consumer:
    """Wraps a handler; subclass it and override ``handle`` and ``setup`` for more control.

    One Consumer object is copied into every worker process by fork, so ``setup`` is where
    per-process state belongs (connections, loaded models): it runs once in each worker
    before its first request.
    """

    accepts_memoryview = False
    """True: ``handle`` may be given a ``memoryview`` instead of ``bytes``, with no copy of a
    large payload; valid only during the call (keep ``bytes(view)`` if you need it later)."""

    def __init__(self, handler: Handler | None = None, *,
                 accepts_memoryview: bool | None = None) -> None:
        self.handler = handler
        if accepts_memoryview is not None:
            self.accepts_memoryview = accepts_memoryview

    def setup(self) -> None:
        """Called once in each worker process before it takes any request."""

    def handle(self, message: bytes) -> Reply:
        """Return the reply to ``message`` (bytes) as bytes-like or str."""
        if self.handler is None:
            raise NotImplementedError("pass Consumer(handler=...) or override handle()")
        return self.handler(message)


class MissingAttribute(AttributeError):
    """``MODULE:ATTR`` names an attribute that is not there: ``part`` of ``owner``."""

    def __init__(self, message: str, part: str, owner: Any):
        super().__init__(message)
        self.part, self.owner = part, owner


def load_target(spec: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted), looking in the current directory too:
    the one way the app is found, by workers and by the command line's checks."""
    module_name, attr = split_spec(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise MissingAttribute(str(exc), part, target) from None
    return target


def split_spec(spec: str) -> tuple[str, str]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError("expected MODULE:ATTR, got %r" % (spec,))
    return module_name, attr


def as_consumer(target: Any) -> Consumer:
    """Accept a Consumer instance, a Consumer subclass, a handler function, or the
    ``MODULE:ATTR`` of one of those."""
    if isinstance(target, str):
        target = load_target(target)
    if isinstance(target, Consumer):
        return target
    if isinstance(target, type) and issubclass(target, Consumer):
        return target()
    if callable(target):
        return Consumer(handler=target)
    raise TypeError("expected a Consumer, a Consumer subclass or a callable, got %r" % (target,))


def target_of(consumer: Any) -> tuple[str | None, Consumer | None]:
    """(spec, None) for ``MODULE:ATTR``, which each worker imports afresh (so a reload runs
    new code); (None, the Consumer) for anything else."""
    if isinstance(consumer, str):
        split_spec(consumer)
        return consumer, None
    return None, as_consumer(consumer)


def describe(consumer: Consumer) -> str:
    """``module:name`` of what a Consumer runs, for titles and logs."""
    handler = consumer.handler if type(consumer).handle is Consumer.handle else None
    thing = handler if handler is not None else type(consumer)
    return "%s:%s" % (getattr(thing, "__module__", "?"), getattr(thing, "__qualname__", "?"))


def reply_bytes(result: object) -> bytes | bytearray | memoryview:
    """The bytes to send for a handler's return value; TypeError for anything else."""
    if isinstance(result, (bytes, bytearray, memoryview)):
        return result
    if isinstance(result, str):
        return result.encode("utf-8")
    raise TypeError("handler returned %s, expected bytes or str" % type(result).__name__)
