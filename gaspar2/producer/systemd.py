"""systemd, without a dependency: the notify protocol and socket activation.

Notify: when ``NOTIFY_SOCKET`` is set, each state change is one datagram of ``KEY=value``
lines to that unix socket (an abstract one when the name starts with ``@``). Socket
activation: with ``LISTEN_PID`` equal to this process's pid, ``LISTEN_FDS`` sockets start at
fd 3. Both variables are read once and removed from the environment, so neither the workers
nor anything they start take them for theirs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gaspar2")

LISTEN_FDS_START = 3
RELOAD_CHECK = 0.05            # how often a reload's progress is checked


class Notifier:
    """Sends ``READY=1``, ``RELOADING=1``, ``STOPPING=1`` and ``STATUS=...`` to systemd;
    does nothing when this process was not started with ``NOTIFY_SOCKET``."""

    def __init__(self, address: str | None):
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None

    @classmethod
    def from_environment(cls) -> Notifier:
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        data = ("\n".join(lines) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", "STATUS=" + status)

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", "MONOTONIC_USEC=%d" % usec, "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", "STATUS=" + status)

    def status(self, status: str) -> None:
        self.send("STATUS=" + status)


def listen_fds(unset: bool = True) -> list[socket.socket]:
    """The listening sockets systemd passed to this process (socket activation); none when
    ``LISTEN_PID`` names another process."""
    env = os.environ
    fds, pid = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not fds.isdigit() or not pid.isdigit() or int(pid) != os.getpid():
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(fds)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


class ReloadWatch:
    """After RELOADING=1 (SIGHUP), tells systemd READY=1 once the reload is over: no worker
    of an older generation is left, or the new ones keep failing to start (the old ones
    keep serving then, and STATUS says so)."""

    def __init__(self, loop: Any, notifier: Notifier, supervisor: Any,
                 serving: Callable[[], str]):
        self.loop = loop
        self.notifier = notifier
        self.supervisor = supervisor
        self.serving = serving
        self.timer: Any = None
        self.failures = 0

    def start(self) -> None:
        if self.notifier.address is None:
            return
        self.stop()
        self.failures = self._failures()
        self.timer = self.loop.timer(RELOAD_CHECK, RELOAD_CHECK)
        self.timer.start(self._check)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None

    def _failures(self) -> int:
        """Workers that failed to start in a row, whatever the cause."""
        return sum(backoff.failures for backoff in self.supervisor.backoffs.values())

    def _check(self) -> None:
        sup = self.supervisor
        if not any(w.generation < sup.generation for w in sup.workers.values()):
            self.stop()
            self.notifier.ready(self.serving() + " (reloaded)")
        elif self._failures() > self.failures:
            self.stop()
            self.notifier.ready("reload failed: the new workers cannot start; the old ones "
                                "keep serving")
