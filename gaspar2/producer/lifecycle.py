"""The producer: the composition root. It opens and closes the parts in order, keeps the one
lifecycle state, and turns signals into ``handle_<SIGNAL>`` methods, as gunicorn's arbiter
does. How a request travels between the parts is the request path's business (path.py).

Opening order matters: the fork server is forked first, before any ZeroMQ context or
listening socket exists, so no worker can inherit either (see forkserver.py).
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from .. import logs, settings
from ..consumer import Consumer, as_consumer, describe, target_of
from ..loading import forget_setup_failures
from ..protocol.progress import ProgressTable
from ..workers import forkserver
from ..workers.process import make_ipc_dir, raise_open_file_limit, set_title
from ..workers.worker import LocalWorkers
from . import metrics
from .exposure import Exposure
from .members import RemoteMembers
from .path import RequestPath
from .transport import Announcing, Transport

log = logging.getLogger("gaspar2")

SWEEP_INTERVAL = 0.1           # how often timeouts are checked
# A stop signal repeated within this long after the first was logged is the same delivery,
# counted once: timeout(1) and some supervisors signal the child and then its whole process
# group, microseconds apart. (Deliveries before the first is handled merge in the event loop.)
REPEAT_WINDOW = 0.2


class WorkerBootError(RuntimeError):
    """A worker could not start while the producer was starting (its setup() raised)."""


class StoppedWhileStarting(Exception):
    """A stop signal arrived before the workers were ready."""


class State(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Producer:
    """Serves ``consumer`` on ``host:port`` with ``processes`` worker processes; every
    other option is a keyword argument named as in ``gaspar2.settings``."""

    def __init__(self, consumer: Any, port: int | None = None, processes: int | None = None,
                 host: str | None = None, **options: Any) -> None:
        positional = {"port": port, "workers": processes, "host": host}
        options.update((k, v) for k, v in positional.items() if v is not None)
        self.settings = settings.resolve(options)
        self.settings.workers = self.settings.workers or os.cpu_count() or 1
        self.spec, self.consumer = target_of(consumer)
        self.name = (self.settings.name or self.spec
                     or (describe(self.consumer) if self.consumer is not None else "?"))
        self.state = State.STARTING
        self._stop_signal = ("", 0.0)   # the first stop signal, and when it was logged
        self.running = gevent.event.Event()
        self.stopped = gevent.event.Event()
        self._startup = gevent.event.AsyncResult()
        self._drained = gevent.event.Event()
        self.loop = gevent.get_hub().loop
        self.progress = ProgressTable(slow_after=self.settings.giveback_after)
        self.path = RequestPath(self, self.settings, self.loop, self.progress)
        self.supervisor = self.path.supervisor
        self.exposure = Exposure(self.settings, self.loop, self.path, self.name)
        self.notifier = self.exposure.notifier
        self.ipc_dir: str | None = None
        self.fork: forkserver.ForkServerClient | None = None
        self.transport: Transport | None = None
        self.sweeper: Any = None
        self.workers_on_reload: Callable[[], int | None] | None = None
        """Called on SIGHUP before the fresh workers start: how many are wanted from then
        on, or None to keep the count. ``gaspar2 serve`` reads its config file again here,
        so an operator can set the count without counting signals."""

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) of the first TCP listener, once serving (port 0 picks a
        free one); ``addresses`` names every listener."""
        if self.exposure.address is None:
            if self.addresses:
                raise RuntimeError("no TCP listener: see addresses %s" % self.addresses)
            raise RuntimeError("the producer is not serving yet: call start() first")
        return self.exposure.address

    @property
    def addresses(self) -> list[str]:
        return self.exposure.addresses

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, blocking: bool = True) -> None:
        """Start the workers and serve; with ``blocking=False`` return once serving.

        Blocking, it handles signals from the first moment: a TERM or INT while the workers
        start stops it cleanly, and start() returns."""
        if blocking:
            self._install_signal_handlers()
        try:
            self._open()
        except StoppedWhileStarting:
            self._close()
            log.info("stopped")
            return
        except BaseException:
            self._close()
            raise
        if blocking:
            self.stopped.wait()

    def _open(self) -> None:
        s = self.settings
        raise_open_file_limit(s.max_connections)
        self.ipc_dir, self.ipc_lock = make_ipc_dir()
        workers = LocalWorkers(self._make_consumer, self.name, self.ipc_dir, self.progress,
                               s.giveback_after, self.path.local_token,
                               self.path.max_reply_size, self.path.open_arena())
        # Fork the fork server first: no listener and no ZeroMQ context exist yet.
        pid, channel = forkserver.start(workers, "gaspar2 forkserver %s" % self.name)
        self.fork = forkserver.ForkServerClient(self.loop, pid, channel, self.supervisor)
        self.transport = self.path.transport = Transport(
            self.loop, self.path.on_sink, self.ipc_dir,
            max(s.max_message_size, self.path.max_reply_size))
        self.supervisor.attach(Announcing(self.fork, self.transport))
        log.info("buffer limit %s for requests and replies", self.path.budget.describe())
        if s.remote_workers:
            remote_sink = self.transport.open_remote(s.remote_workers, s.curve_secret_key,
                                                     s.curve_authorized, s.insecure_remote_workers,
                                                     s.max_remote_workers, self.path.fds)
            self.path.remote = RemoteMembers(self.path, self.transport.ctx, remote_sink,
                                                 s.heartbeat, s.max_remote_workers,
                                                 self.path.max_reply_size)
            log.info("remote workers may join at %s", remote_sink.endpoint)
        self.exposure.observe(self.health)     # metrics and /healthz answer while workers start
        self.notifier.status("starting %s" % logs.counted(s.workers, "worker"))
        self.supervisor.start()
        self._startup.get()
        self.exposure.listen()
        self._startup.get()         # again: a stop signal may have come meanwhile
        self.path.start()
        self.sweeper = self.loop.timer(SWEEP_INTERVAL, SWEEP_INTERVAL)
        self.sweeper.start(self.path.sweep)
        self.state = State.SERVING
        self.running.set()
        set_title("gaspar2 producer %s %s" % (self.name, self.exposure.label))
        log.info("gaspar2 %s", self.exposure.serving_line())
        self.notifier.ready(self.exposure.serving_line())

    def _make_consumer(self) -> Consumer:
        if self.spec:
            return as_consumer(self.spec)     # imported afresh in each worker
        assert self.consumer is not None
        return self.consumer

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish the requests received (up to ``timeout``, by default the
        graceful timeout), then stop the workers."""
        if self.state in (State.DRAINING, State.STOPPED):
            self.stopped.wait()
            return
        self.state = State.DRAINING
        self.path.closing = self.path.draining = True
        self.notifier.stopping("stopping: finishing %d requests" % len(self.path.conns))
        self.path.stop_accepting()
        if self.path.conns:
            timeout = self.settings.graceful_timeout if timeout is None else timeout
            log.info("stopping: finishing %d requests (up to %.1f s)", len(self.path.conns),
                     timeout)
            self._drained.wait(timeout)
        self.path.fail_all("refused", "the server stopped before this request was answered")
        self._close()
        log.info("stopped")

    def _close(self) -> None:
        """Stop the fork server and its workers, release ZeroMQ and the ipc directory."""
        self.state = State.STOPPED
        self.path.close()
        self.path.close_listener()
        if self.fork is not None:
            self.supervisor.close()
            self.fork.close()
        if self.sweeper is not None:
            self.sweeper.stop()
        self.exposure.reload_watch.stop()
        if self.path.observer is not None:
            self.path.observer.close()
        if self.transport is not None:
            self.transport.close()
        if self.ipc_dir is not None:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)
            os.close(self.ipc_lock)
            self.ipc_dir = None
        self.running.clear()
        self.stopped.set()

    # -- signals ---------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        for name in ("TERM", "INT", "QUIT", "HUP", "TTIN", "TTOU", "USR1", "USR2"):
            gevent.signal_handler(getattr(signal, "SIG" + name),
                                  getattr(self, "handle_" + name.lower()))

    def handle_term(self) -> None:
        self._graceful_stop("SIGTERM")

    def handle_int(self) -> None:
        self._graceful_stop("SIGINT")

    def _graceful_stop(self, name: str) -> None:
        """The first TERM or INT drains; a second delivery stops at once (see REPEAT_WINDOW)."""
        if self.state is State.STARTING:
            self._stop_starting(name)
        elif self.state is State.DRAINING:
            first, at = self._stop_signal
            if name == first and time.monotonic() - at < REPEAT_WINDOW:
                log.info("%s again within %d ms: the same delivery, counted once", name,
                         REPEAT_WINDOW * 1000)
                return
            log.info("%s again: stopping now", name)
            self._drained.set()
        elif self.state is State.SERVING:
            log.info("%s: stopping gracefully", name)
            self._stop_signal = (name, time.monotonic())
            gevent.spawn(self.stop)

    def _stop_starting(self, name: str) -> None:
        log.info("%s while starting: stopping", name)
        if self._startup.ready():   # the workers are ready: _open looks once more, later
            self._startup = gevent.event.AsyncResult()
        self._startup.set_exception(StoppedWhileStarting(name))

    def handle_quit(self) -> None:
        if self.state is State.STARTING:
            self._stop_starting("SIGQUIT")
            return
        log.info("SIGQUIT: stopping now")
        self._drained.set()
        gevent.spawn(self.stop, 0)

    def handle_hup(self) -> None:
        if self.state is State.STARTING:
            log.info("SIGHUP while starting: ignored, the workers starting are fresh already")
        elif self.state is State.SERVING:
            log.info("SIGHUP: replacing every worker with a fresh one")
            self.notifier.reloading()
            forget_setup_failures(self.ipc_dir)
            wanted = self.workers_on_reload() if self.workers_on_reload is not None else None
            self.supervisor.reload(wanted)
            self.exposure.reload_watch.start()

    def handle_ttin(self) -> None:
        if self.state in (State.STARTING, State.SERVING):
            self.supervisor.resize(+1)

    def handle_ttou(self) -> None:
        if self.state in (State.STARTING, State.SERVING):
            self.supervisor.resize(-1)

    def handle_usr1(self) -> None:
        log.info("SIGUSR1: reopened %d log files", logs.reopen())

    def handle_usr2(self) -> None:
        self.log_status()

    def status(self) -> dict[str, int]:
        """Counts for operators (SIGUSR2 and /healthz show them) and for leak checks."""
        return self.path.status()

    def log_status(self) -> None:
        log.info("status: %s", " ".join("%s=%s" % item for item in self.status().items()))

    def health(self) -> tuple[bool, dict[str, Any]]:
        return metrics.health(self.state.value, self.status())

    # -- the request path's events ---------------------------------------------------------------

    def workers_ready(self) -> None:
        if self.state is State.STARTING and not self._startup.ready():
            self._startup.set()

    def worker_gone(self, description: str) -> None:
        if self.state is State.STARTING and not self._startup.ready():
            self._startup.set_exception(WorkerBootError("%s while starting" % description))
            self.path.closing = True        # the other workers' exits are expected now

    def forkserver_gone(self) -> None:
        if self.state in (State.STARTING, State.SERVING):
            log.error("the fork server died: stopping")
            if self.state is State.STARTING and not self._startup.ready():
                self._startup.set_exception(RuntimeError("the fork server died"))
            else:
                gevent.spawn(self.stop, 0)

    def idle(self) -> None:
        if self.state is State.DRAINING:
            self._drained.set()
