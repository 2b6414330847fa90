"""The fork server: a small process, free of ZeroMQ and client sockets, from which every
worker descends.

The producer starts it before it opens its listener or a ZeroMQ context, so every worker,
the first ones and every respawn, starts from the same clean state: it inherits no client
connection, no listening socket and no ZeroMQ context or I/O thread.

The fork server never imports the app. For each generation of workers (the first one, then
one per reload) it forks a *preloader*, which imports the app once and then forks that
generation's workers: the first ones and every replacement (after a crash, ``max_requests``,
``worker_timeout``, TTIN). So a generation reads the code from disk once, when it starts, and
only a reload puts new code into service; ``setup()`` still runs in each worker. A
preloader reaps its workers and reports each exit at once. It leaves when its generation is
superseded and its last worker is gone, or at once if it was still importing. A generation
whose import failed fails every worker asked of it, at once, until the next reload.

The control channels are socketpairs carrying fixed-size records (see ``wire.RECORD``):
producer and fork server, fork server and each preloader. Closing a channel tells the
process at the other end to stop its workers and exit.
"""

from __future__ import annotations

import _socket
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import gevent.event

from ..guard import guarded
from ..loading import EXIT_BOOT
from ..protocol import wire
from .process import (
    become_subreaper,
    close_inherited_sockets,
    die_with_parent,
    drop_inherited_hub,
    ignore_signals,
    original,
    pin_malloc,
    refresh_inherited_hub,
    set_title,
)

log = logging.getLogger("gaspar2.forkserver")

STOP_GRACE = 5.0
EXIT_WAIT = STOP_GRACE + 5.0
# The fork server blocks and forks for real, even in a process gevent patched.
FORK, WAITPID, SLEEP = original("os", "fork"), original("os", "waitpid"), original("time", "sleep")
POLL, MONOTONIC = original("select", "poll"), original("time", "monotonic")
SET_SIGNAL = original("signal", "signal")

# Records of these channels besides wire's SPAWN, KILL, SPAWNED and EXITED.
GENERATION = 16     # producer -> fork server: later spawns are of generation ``a``
LOADED = 17         # preloader -> fork server: the app is imported
# What the fork server and its preloaders leave to the workers (or to the producer).
IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTIN,
           signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2)

RunWorker = Callable[[int, int, int], int]    # (worker id, progress slot, parent pid) -> status
Preload = Callable[[], object]                # imports the app, or raises


class Commanded:
    """Reads a control channel's commands: SPAWN and KILL, and those only a subclass
    knows (``_other``)."""

    channel: Any
    reader: wire.RecordReader

    def _spawn(self, worker_id: int, slot: int) -> None:
        raise NotImplementedError

    def _kill(self, worker_id: int, signum: int) -> None:
        raise NotImplementedError

    def _other(self, kind: int, a: int) -> None:
        """A command other than SPAWN and KILL: none, unless a subclass has some."""

    def _read_commands(self) -> bool:
        """Act on what the channel holds; False at its end."""
        records = read_records(self.channel, self.reader)
        if records is None:
            return False
        for kind, worker_id, a, _ in records:
            if kind == wire.SPAWN:
                self._spawn(worker_id, a)
            elif kind == wire.KILL:
                self._kill(worker_id, a)
            else:
                self._other(kind, a)
        return True


class Preloaded(Commanded):
    """Runs in a preloader, once the app is imported: forks, signals and reaps the workers
    of its generation. Never returns."""

    def __init__(self, channel: Any, run_worker: RunWorker):
        self.channel = channel
        self.run_worker = run_worker
        self.workers: dict[int, int] = {}     # pid -> worker id
        self.reader = wire.RecordReader()

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        SET_SIGNAL(signal.SIGCHLD, lambda *a: None)
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

    def _spawn(self, worker_id: int, slot: int) -> None:
        parent = os.getpid()

        def run() -> int:
            self.channel.close()
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            die_with_parent(parent)
            refresh_inherited_hub()
            return self.run_worker(worker_id, slot, parent)
        pid = fork_child(run, "worker %d" % worker_id)
        self.workers[pid] = worker_id
        self._send(wire.SPAWNED, worker_id, pid)

    def _kill(self, worker_id: int, signum: int) -> None:
        for pid, wid in self.workers.items():
            if wid == worker_id:
                os.kill(pid, signum)

    def _reap(self) -> None:
        for pid, status in reaped():
            worker_id = self.workers.pop(pid, None)
            if worker_id is not None:
                self._send(wire.EXITED, worker_id, pid, status)

    def _send(self, kind: int, worker_id: int, a: int = 0, b: int = 0) -> None:
        try:
            self.channel.sendall(wire.encode_record(kind, worker_id, a, b))
        except OSError:
            pass          # the fork server is gone: this process dies with it

    def _stop_workers(self) -> None:
        """Told to leave: TERM the workers, wait a little, then KILL what is left."""
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


def run_preloader(channel: Any, number: int, preload: Preload, run_worker: RunWorker,
                  name: str) -> int:
    """A preloader's life: import the app, then fork and reap its generation's workers."""
    set_title("gaspar2 generation %d %s" % (number, name))
    try:        # superseded while importing: a TERM ends it (see _fork_preloader)
        preload()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})   # the traceback goes out whole
        log.error("generation %d cannot start: importing the app failed", number, exc_info=True)
        return EXIT_BOOT
    ignore_signals(*IGNORED)        # whatever the import installed: the workers' business
    channel.sendall(wire.encode_record(LOADED, 0, number))
    Preloaded(channel, run_worker).serve()
    return 0


class Generation:
    """What the fork server knows of one generation's preloader."""

    __slots__ = ("number", "pid", "channel", "reader", "workers", "loaded", "released")

    def __init__(self, number: int, pid: int, channel: Any):
        self.number = number
        self.pid = pid
        self.channel: Any = channel     # None once closed
        self.reader = wire.RecordReader()
        self.workers: dict[int, int | None] = {}    # worker id -> its pid, once forked
        self.loaded = False
        self.released = False           # told to leave: its end is no news


class ForkServer(Commanded):
    """Runs in the fork server process; never returns. It routes the producer's commands to
    the preloader of each worker's generation, and their reports back."""

    def __init__(self, channel: Any, run_worker: RunWorker, preload: Preload, name: str):
        self.channel = channel
        self.run_worker = run_worker
        self.preload = preload
        self.name = name
        self.reader = wire.RecordReader()
        self.current = 0                # the generation later spawns belong to
        self.generations: dict[int, Generation] = {}  # the preloader spawns of each go to
        self.preloaders: dict[int, Generation] = {}   # pid -> every preloader not yet reaped
        self.channels: dict[int, Generation] = {}     # fd -> preloaders whose channel is open
        self.owners: dict[int, Generation] = {}       # worker id -> its preloader
        self.orphans: dict[int, int] = {}       # pid -> worker id, of a preloader that died
        self.failed: dict[int, tuple[int, int]] = {}  # generation -> (pid, status) of its import

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        SET_SIGNAL(signal.SIGCHLD, lambda *a: None)
        self.poller = POLL()
        self.poller.register(self.channel.fileno(), 1)
        self.poller.register(wake_r, 1)
        self.pipe = (wake_r, wake_w)
        while True:
            for fd, _ in self.poller.poll():
                if fd == wake_r:
                    os.read(wake_r, 4096)
                elif fd == self.channel.fileno():
                    if not self._read_commands():
                        self._stop()
                        os._exit(0)
                elif fd in self.channels:
                    self._read_reports(self.channels[fd])
            self._reap()

    # -- the producer's commands -------------------------------------------------------------

    def _other(self, kind: int, a: int) -> None:
        if kind == GENERATION:
            self._switch(a)

    def _spawn(self, worker_id: int, slot: int) -> None:
        failed = self.failed.get(self.current)
        if failed is not None:          # its import failed: so does every worker of it
            self._send(wire.EXITED, worker_id, *failed)
            return
        generation = self.generations.get(self.current) or self._fork_preloader(self.current)
        generation.workers[worker_id] = None
        self.owners[worker_id] = generation
        self._tell(generation, wire.SPAWN, worker_id, slot)

    def _kill(self, worker_id: int, signum: int) -> None:
        generation = self.owners.get(worker_id)
        if generation is not None:
            self._tell(generation, wire.KILL, worker_id, signum)
            return
        for pid, wid in self.orphans.items():
            if wid == worker_id:
                kill(pid, signum)

    def _switch(self, number: int) -> None:
        self.current = number
        self.failed = {n: f for n, f in self.failed.items() if n == number}
        for generation in list(self.generations.values()):
            self._release_if_done(generation)

    def _release_if_done(self, generation: Generation) -> None:
        """Let a superseded generation's preloader go: once it has no worker, or at once if
        it is still importing (none of its workers exists yet)."""
        if generation.number == self.current:
            return
        if not generation.loaded:
            if not generation.released:
                kill(generation.pid, signal.SIGTERM)
        elif not generation.workers:
            self._hang_up(generation)           # EOF: it leaves
        else:
            return
        generation.released = True
        if self.generations.get(generation.number) is generation:
            del self.generations[generation.number]

    def _fork_preloader(self, number: int) -> Generation:
        ours, theirs = _socket.socketpair()
        server = os.getpid()

        def run() -> int:
            ours.close()
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.channel.close()
            for other in self.channels.values():
                other.channel.close()
            die_with_parent(server)
            return run_preloader(theirs, number, self.preload, self.run_worker, self.name)
        pid = fork_child(run, "the preloader of generation %d" % number)
        theirs.close()
        generation = Generation(number, pid, ours)
        self.generations[number] = self.preloaders[pid] = self.channels[ours.fileno()] = generation
        self.poller.register(ours.fileno(), 1)
        return generation

    # -- the preloaders' reports ---------------------------------------------------------------

    def _read_reports(self, generation: Generation) -> None:
        try:
            data = generation.channel.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return      # its fd was reused since the poll: nothing to read yet
        except OSError:
            data = b""
        if not data:
            self._hang_up(generation)
        else:
            self._handle_reports(generation, data)

    def _handle_reports(self, generation: Generation, data: bytes) -> None:
        for kind, worker_id, a, b in generation.reader.feed(data):
            if kind == LOADED:
                generation.loaded = True
            elif kind == wire.SPAWNED and worker_id in generation.workers:
                generation.workers[worker_id] = a
                self._send(wire.SPAWNED, worker_id, a)
            elif kind == wire.EXITED:
                generation.workers.pop(worker_id, None)
                self.owners.pop(worker_id, None)
                self._send(wire.EXITED, worker_id, a, b)
        self._release_if_done(generation)

    def _hang_up(self, generation: Generation) -> None:
        channel = generation.channel
        if channel is not None:
            self.poller.unregister(channel.fileno())
            del self.channels[channel.fileno()]
            channel.close()
            generation.channel = None

    def _reap(self) -> None:
        for pid, status in reaped():
            generation = self.preloaders.pop(pid, None)
            if generation is not None:
                self._preloader_gone(generation, status)
            elif pid in self.orphans:
                self._send(wire.EXITED, self.orphans.pop(pid), pid, status)

    def _preloader_gone(self, generation: Generation, status: int) -> None:
        """A preloader exited: what it reported before its end is read first; its workers
        that were never forked failed with it; those forked die with it (parent-death
        signal) and, this process being their subreaper, are reaped here."""
        if generation.channel is not None:
            while True:
                try:
                    data = generation.channel.recv(65536, socket.MSG_DONTWAIT)
                except OSError:
                    data = b""
                if not data:
                    break
                self._handle_reports(generation, data)
            self._hang_up(generation)
        if self.generations.get(generation.number) is generation:
            del self.generations[generation.number]
        import_failed = (not generation.loaded and os.WIFEXITED(status)
                         and os.WEXITSTATUS(status) == EXIT_BOOT)
        if import_failed:
            self.failed[generation.number] = (generation.pid, status)
        elif not generation.released:
            log.warning("the preloader of generation %d (pid %d) %s: workers started for it "
                        "from now on import the app again", generation.number, generation.pid,
                        describe(status))
        for worker_id, pid in generation.workers.items():
            self.owners.pop(worker_id, None)
            if pid is None:
                self._send(wire.EXITED, worker_id, generation.pid, status)
            elif kill(pid, 0):
                self.orphans[pid] = worker_id
            else:                       # gone already, and reaped by its parent
                self._send(wire.EXITED, worker_id, pid, signal.SIGKILL)
        generation.workers.clear()

    # -- to the producer and the preloaders ---------------------------------------------------

    def _send(self, kind: int, worker_id: int, a: int = 0, b: int = 0) -> None:
        try:
            self.channel.sendall(wire.encode_record(kind, worker_id, a, b))
        except OSError:
            pass          # the producer is gone; EOF on the channel ends this process

    def _tell(self, generation: Generation, kind: int, worker_id: int, a: int) -> None:
        if generation.channel is None:
            return        # it is gone or going: its end reports its workers
        try:
            generation.channel.sendall(wire.encode_record(kind, worker_id, a))
        except OSError:
            pass

    def _stop(self) -> None:
        """Producer gone: each preloader stops its workers (one still importing is ended);
        wait a little, then KILL what is left."""
        for generation in list(self.preloaders.values()):
            generation.released = True
            self._hang_up(generation)
            if not generation.loaded:
                kill(generation.pid, signal.SIGTERM)
        deadline = MONOTONIC() + STOP_GRACE + 1.0
        while (self.preloaders or self.orphans) and MONOTONIC() < deadline:
            try:
                pid, _ = WAITPID(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.preloaders.pop(pid, None)
                self.orphans.pop(pid, None)
            else:
                SLEEP(0.01)
        for pid in [*self.preloaders, *self.orphans]:
            kill(pid, signal.SIGKILL)       # their workers die with them


def kill(pid: int, signum: int) -> bool:
    """Signal ``pid``; False if it is gone."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return False
    return True


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return "was killed by %s" % signal.Signals(os.WTERMSIG(status)).name
    return "exited with status %d" % os.WEXITSTATUS(status)


def read_records(channel: Any, reader: wire.RecordReader) -> list[tuple[int, int, int, int]] | None:
    """The whole records a control channel has now; None at its end."""
    try:
        data = channel.recv(65536)
    except OSError:
        data = b""
    return reader.feed(data) if data else None


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, status) of each child that has exited, without waiting for any."""
    while True:
        try:
            pid, status = WAITPID(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def fork_child(run: Callable[[], int], what: str) -> int:
    """Fork a process that runs ``run`` and exits with its status; returns its pid. SIGTERM
    is held pending across the fork: a TERM sent to the child at once (a reload cancelling
    it) would otherwise be lost in the SIG_IGN it inherits. In the child a TERM ends it
    until ``run`` puts a handler of its own in."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    pid: int = FORK()
    if pid == 0:
        status = 1
        try:
            SET_SIGNAL(signal.SIGTERM, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            signal.set_wakeup_fd(-1)
            status = run()
        except BaseException:
            log.exception("%s crashed", what)
        finally:
            logging.shutdown()
            os._exit(status)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    return pid


def start(run_worker: RunWorker, name: str, preload: Preload) -> tuple[int, Any]:
    """Fork the fork server; returns (pid, the producer's end of the control channel).
    ``preload`` imports the app, in each generation's preloader."""
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
        ignore_signals(*IGNORED)
        set_title("gaspar2 forkserver %s" % name)
        pin_malloc()        # for the processes it forks, not the producer's host program
        become_subreaper()  # a preloader's workers, should it die, are reaped here
        ForkServer(theirs, run_worker, preload, name).serve()
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

    def generation(self, number: int) -> None:
        """Workers spawned from now on are of generation ``number``, whose code is imported
        once, at its first spawn; other generations' preloaders leave with their last
        worker."""
        self._send(GENERATION, 0, number)

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
