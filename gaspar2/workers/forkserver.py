"""The fork server: a small process, free of ZeroMQ and client sockets, that forks every worker.

The producer starts it before it opens its listener or a ZeroMQ context, so every worker,
the first ones and every respawn, is forked from the same clean state: it inherits no
client connection, no listening socket and no ZeroMQ context or I/O thread. The fork
server is also the workers' parent: it reaps them and reports each exit at once.

The control channel is a socketpair carrying fixed-size records (see ``wire.RECORD``).
Closing it tells the fork server to stop its workers and exit.
"""

from __future__ import annotations

import _socket
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, Protocol

import gevent.event

from ..guard import guarded
from ..protocol import wire
from .process import (
    close_inherited_sockets,
    die_with_parent,
    drop_inherited_hub,
    ignore_signals,
    original,
    pin_malloc,
    set_title,
)

log = logging.getLogger("gaspar2.forkserver")

STOP_GRACE = 5.0
EXIT_WAIT = STOP_GRACE + 5.0
# The fork server blocks and forks for real, even in a process gevent patched.
FORK, WAITPID, SLEEP = original("os", "fork"), original("os", "waitpid"), original("time", "sleep")
POLL, MONOTONIC = original("select", "poll"), original("time", "monotonic")

RunWorker = Callable[[int, int, int], int]    # (worker id, progress slot, parent pid) -> status


class ForkServer:
    """Runs in the fork server process; never returns."""

    def __init__(self, channel: Any, run_worker: RunWorker):
        self.channel = channel
        self.run_worker = run_worker
        self.workers: dict[int, int] = {}     # pid -> worker id
        self.reader = wire.RecordReader()

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        original("signal", "signal")(signal.SIGCHLD, lambda *a: None)
        poller = POLL()
        poller.register(self.channel.fileno(), 1)
        poller.register(wake_r, 1)
        self.pipe = (wake_r, wake_w)
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    os.read(wake_r, 4096)
                elif not self._read_commands():
                    self._stop_workers()
                    os._exit(0)
            self._reap()

    def _read_commands(self) -> bool:
        data = self.channel.recv(65536)
        if not data:
            return False
        for kind, worker_id, a, _ in self.reader.feed(data):
            if kind == wire.SPAWN:
                self._spawn(worker_id, a)
            elif kind == wire.KILL:
                self._kill(worker_id, a)
        return True

    def _spawn(self, worker_id: int, slot: int) -> None:
        parent = os.getpid()
        # A TERM for the worker may come at once (a reload cancelling it): held pending
        # until the child has left the fork server's SIG_IGN, else it would be lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = FORK()
        if pid == 0:
            status = 1
            try:
                # Until the worker's own handler is in, a TERM must end it.
                original("signal", "signal")(signal.SIGTERM, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                signal.set_wakeup_fd(-1)
                self.channel.close()
                os.close(self.pipe[0])
                os.close(self.pipe[1])
                die_with_parent(parent)
                status = self.run_worker(worker_id, slot, parent)
            except BaseException:
                log.exception("worker %d crashed", worker_id)
            finally:
                logging.shutdown()
                os._exit(status)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        self.workers[pid] = worker_id
        self._send(wire.SPAWNED, worker_id, pid)

    def _kill(self, worker_id: int, signum: int) -> None:
        for pid, wid in self.workers.items():
            if wid == worker_id:
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self.workers:
            try:
                pid, status = WAITPID(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.workers.pop(pid, None)
            if worker_id is not None:
                self._send(wire.EXITED, worker_id, pid, status)

    def _send(self, kind: int, worker_id: int, a: int = 0, b: int = 0) -> None:
        try:
            self.channel.sendall(wire.encode_record(kind, worker_id, a, b))
        except OSError:
            pass          # the producer is gone; EOF on the channel ends this process

    def _stop_workers(self) -> None:
        """Producer gone: TERM the workers, wait a little, then KILL what is left."""
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)
        deadline = MONOTONIC() + STOP_GRACE
        while self.workers and MONOTONIC() < deadline:
            pid, _ = WAITPID(-1, os.WNOHANG)
            if pid:
                self.workers.pop(pid, None)
            else:
                SLEEP(0.01)
        for pid in self.workers:
            os.kill(pid, signal.SIGKILL)


def start(run_worker: RunWorker, title: str) -> tuple[int, Any]:
    """Fork the fork server; returns (pid, the producer's end of the control channel)."""
    ours, theirs = _socket.socketpair()     # plain sockets, whatever monkey patching did
    parent = os.getpid()
    pid = FORK()
    if pid:
        theirs.close()
        return pid, ours
    status = 1
    try:
        drop_inherited_hub()
        ours.close()
        die_with_parent(parent)
        close_inherited_sockets(keep={theirs.fileno(), 0, 1, 2})
        ignore_signals(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                       signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2)
        set_title(title)
        pin_malloc()        # for the workers it forks, not the producer's host program
        ForkServer(theirs, run_worker).serve()
    except BaseException:
        log.exception("fork server crashed")
    finally:
        os._exit(status)


class ForkServerEvents(Protocol):
    def spawned(self, worker_id: int, pid: int) -> None: ...
    def exited(self, worker_id: int, pid: int, status: int) -> None: ...
    def forkserver_gone(self) -> None: ...


class ForkServerClient:
    """The producer's end of the control channel: commands out, events in."""

    def __init__(self, loop: Any, pid: int, channel: Any, events: ForkServerEvents):
        self.pid = pid
        self.channel = channel
        self.events = events
        self.reader = wire.RecordReader()
        self.exited = gevent.event.Event()
        channel.setblocking(False)
        self.watcher = loop.io(channel.fileno(), 1)
        self.watcher.start(self._on_channel)

    def spawn(self, worker_id: int, slot: int) -> None:
        self._send(wire.SPAWN, worker_id, slot)

    def kill(self, worker_id: int, signum: int) -> None:
        self._send(wire.KILL, worker_id, signum)

    def _send(self, kind: int, worker_id: int, a: int) -> None:
        try:
            self.channel.sendall(wire.encode_record(kind, worker_id, a))
        except OSError as exc:
            log.error("cannot reach the fork server: %s", exc)

    @guarded
    def _on_channel(self) -> None:
        try:
            data = self.channel.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.watcher.stop()
            self.exited.set()
            self.events.forkserver_gone()
            return
        for kind, worker_id, a, b in self.reader.feed(data):
            if kind == wire.SPAWNED:
                self.events.spawned(worker_id, a)
            elif kind == wire.EXITED:
                self.events.exited(worker_id, a, b)

    def close(self) -> None:
        """Tell the fork server to stop every worker and exit; wait for it, then reap it."""
        try:
            self.channel.shutdown(socket.SHUT_WR)       # EOF: its cue to stop
        except OSError:
            pass
        self.exited.wait(EXIT_WAIT)                     # it closed its end: it is exiting
        try:
            if not self.exited.is_set():
                os.kill(self.pid, signal.SIGKILL)
            WAITPID(self.pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
        self.watcher.stop()
        self.channel.close()
