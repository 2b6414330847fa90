"""The producer: the composition root. It opens and closes the parts in order, keeps the one
lifecycle state, and turns signals into ``handle_<SIGNAL>`` methods, as gunicorn's arbiter
does. How a request travels between the parts is the request path's business (path.py).

Opening order matters: the fork server is forked first, before any ZeroMQ context or
listening socket exists, so no worker can inherit either (see forkserver.py).
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.monkey

from .. import logs, settings
from ..consumer import Consumer, as_consumer, describe, target_of
from ..frontend import listeners
from ..frontend.delivery import after_reply
from ..loading import forget_setup_failures, preload
from ..protocol.progress import ProgressTable
from ..workers import forkserver
from ..workers.command import Command
from ..workers.process import make_ipc_dir, raise_open_file_limit, set_title
from ..workers.supervisor import Supervisor
from ..workers.worker import LocalWorkers
from . import metrics, systemd
from .members import RemoteMembers
from .path import RequestPath
from .transport import Announcing, Transport

log = logging.getLogger("gaspar2")

SWEEP_INTERVAL = 0.1           # how often timeouts are checked
HANDSHAKES_UNDER_WAY = 0.1     # stopping: how long handshakes in flight may take to complete,
QUIET_ACCEPTS = 0.01           # and how long without one means they have
# The thread's own, not a greenlet's, whatever monkey patching did.
THREAD_IDENT: Callable[[], int] = gevent.monkey.get_original("_thread", "get_ident")
HUB_SILENCE = 5.0               # a start(blocking=False) whose hub never runs is told after this
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

    # Bound to the gevent loop that serves, so made by start(), in the thread that runs it.
    loop: Any
    path: RequestPath
    supervisor: Supervisor
    notifier: systemd.Notifier
    reload_watch: systemd.ReloadWatch

    def __init__(self, consumer: Any, port: int | None = None, processes: int | None = None,
                 host: str | None = None, **options: Any) -> None:
        positional = {"port": port, "workers": processes, "host": host}
        options.update((k, v) for k, v in positional.items() if v is not None)
        self.settings = settings.resolve(options)
        self.settings.workers = self.settings.workers or os.cpu_count() or 1
        listeners.validate(self.settings.bind)
        self.spec, self.consumer = target_of(consumer)
        self.name = (self.settings.name or self.spec
                     or (str(self.consumer) if isinstance(self.consumer, Command)
                         else describe(self.consumer) if self.consumer is not None else "?"))
        self.state = State.STARTING
        self._stop_signal = ("", 0.0)   # the first stop signal, and when it was logged
        self.running = gevent.event.Event()
        self.stopped = gevent.event.Event()
        self._startup = gevent.event.AsyncResult()
        self._drained = gevent.event.Event()
        self.progress = ProgressTable(slow_after=self.settings.giveback_after)
        self.thread: int | None = None  # the ident of the thread whose hub serves
        self.swept = 0.0                # when the loop last swept (see _check_hub_runs)
        self.rename_process = False
        """True (``gaspar2 serve``): the process is the producer's own, renamed for ps."""
        self.ipc_dir: str | None = None
        self._address: tuple[str, int] | None = None     # the first TCP listener's
        self._label = ""                # how logs and titles name the first TCP listener
        self._addresses: list[str] = []     # every listener's, once serving
        self.fork: forkserver.ForkServerClient | None = None
        self.transport: Transport | None = None
        self.sweeper: Any = None
        self.workers_on_reload: Callable[[], int | None] | None = None
        """Called on SIGHUP before the fresh workers start: how many are wanted from then
        on, or None to keep the count. ``gaspar2 serve`` reads its config file again here,
        so an operator can set the count without counting signals."""

    def _assemble(self) -> None:
        """Make the parts bound to a gevent loop: the loop of the thread calling start()."""
        if self.thread is not None:
            raise RuntimeError("this producer was started already: make a new one")
        self.loop = gevent.get_hub().loop
        self.path = RequestPath(self, self.settings, self.loop, self.progress)
        self.supervisor = self.path.supervisor
        self.notifier = systemd.Notifier.from_environment()
        self.activated = systemd.listen_fds()
        self.reload_watch = systemd.ReloadWatch(self.loop, self.notifier, self.supervisor,
                                                self._serving_line)
        self.thread = THREAD_IDENT()    # last: other threads read the parts once it is set

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port) of the first TCP listener, once serving (port 0 picks a
        free one); ``addresses`` names every listener."""
        if self.thread is None or self._address is None:
            if self.addresses:
                raise RuntimeError("no TCP listener: see addresses %s" % self.addresses)
            raise RuntimeError("the producer is not serving yet: call start() first")
        return self._address

    @property
    def addresses(self) -> list[str]:
        return self._addresses if self.thread is not None else []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, blocking: bool = True) -> None:
        """Start the workers and serve; with ``blocking=False`` return once serving.

        Blocking, in the main thread, it handles signals from the first moment: a TERM or
        INT while the workers start stops it cleanly, and start() returns. Not blocking, the
        program must go on running gevent (a gevent server, greenlets that wait); a program
        that does not run gevent uses ``start_in_thread()``."""
        self._assemble()
        if blocking and in_main_thread():
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
        else:
            self._check_hub_runs()

    def start_in_thread(self) -> threading.Thread:
        """Serve from a thread of its own, which runs its own gevent hub: for a program that
        does not run gevent (a threaded WSGI server such as Flask's or Django's, a script).
        Returns once serving, or raises what start() raised. ``gaspar2.client.request``
        from any other thread reaches it; ``stop()`` may be called from any thread. Signals
        stay the host program's."""
        started = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            try:
                self.start(blocking=False)
            except BaseException as exc:
                failed.append(exc)
                return
            finally:
                started.set()
            self.stopped.wait()             # runs this thread's hub until stopped

        thread = threading.Thread(target=serve, name="gaspar2-producer", daemon=True)
        thread.start()
        started.wait()
        if failed:
            thread.join()
            raise failed[0]
        return thread

    def _check_hub_runs(self) -> None:
        """After start(blocking=False), the caller's gevent hub must run for anything to be
        served. A program that does not run gevent is told so, once, rather than left with
        every request timing out in silence."""
        if gevent.monkey.is_module_patched("threading"):
            return                      # a patched program's timers need that hub themselves
        started = time.monotonic()

        def check() -> None:
            if self.state is State.SERVING and self.swept < started:
                log.error("nothing is served: the gevent hub of the thread that called "
                          "start(blocking=False) has not run for %.0f s, so this program does "
                          "not run gevent; call start_in_thread() instead", HUB_SILENCE)
        timer = threading.Timer(HUB_SILENCE, check)
        timer.daemon = True
        timer.start()

    def _open(self) -> None:
        s = self.settings
        raise_open_file_limit(s.max_connections)
        self.ipc_dir, self.ipc_lock = make_ipc_dir()
        workers = LocalWorkers(self._make_consumer, self.name, self.ipc_dir, self.progress,
                               s.giveback_after, self.path.local_token,
                               self.path.max_reply_size, self.path.open_arena())
        # Fork the fork server first: no listener and no ZeroMQ context exist yet.
        pid, channel = forkserver.start(workers, self.name, functools.partial(preload, self.spec))
        self.fork = forkserver.ForkServerClient(self.loop, pid, channel, self.supervisor)
        self.transport = self.path.transport = Transport(
            self.loop, self.path.on_sink, self.ipc_dir,
            max(s.max_message_size, self.path.max_reply_size))
        self.supervisor.attach(Announcing(self.fork, self.transport), self.fork)
        log.info("buffer limit %s for requests and replies", self.path.budget.describe())
        if s.remote_workers:
            remote_sink = self.transport.open_remote(s.remote_workers, s.curve_secret_key,
                                                     s.curve_authorized, s.insecure_remote_workers,
                                                     s.max_remote_workers, self.path.fds)
            self.path.remote = RemoteMembers(self.path, self.transport.ctx, remote_sink,
                                                 s.heartbeat, s.max_remote_workers,
                                                 self.path.max_reply_size, self._listening)
            log.info("remote workers may join at %s", remote_sink.endpoint)
        self._observe()         # metrics and /healthz answer while the workers start
        self.notifier.status("starting %s" % logs.counted(s.workers, "worker"))
        self.supervisor.start()
        self._startup.get()
        self._listen()
        self._startup.get()         # again: a stop signal may have come meanwhile
        self.path.start()
        self.sweeper = self.loop.timer(SWEEP_INTERVAL, SWEEP_INTERVAL)
        self.sweeper.start(self._sweep)
        self.state = State.SERVING
        self.running.set()
        if self.rename_process:
            set_title("gaspar2 producer %s %s" % (self.name, self._label))
        log.info("gaspar2 %s", self._serving_line())
        self.notifier.ready(self._serving_line())

    def _observe(self) -> None:
        """Start the metrics and health server and the access log, when asked for."""
        s, path = self.settings, self.path
        if s.metrics or s.access_log:
            gauges = metrics.gauges(path, path.dispatcher, path.ready_count)
            gauges.update(metrics.bounds_gauges(path.counts))
            path.observer = metrics.Observer(gauges, s.metrics, s.access_log, self.health,
                                             s.metrics_read_timeout, path.fds)

    def _listen(self) -> None:
        """Open every address (or take systemd's sockets) and hand them to the front end,
        which learns what to do once a reply is written (see delivery.py)."""
        s, path = self.settings, self.path
        opened = listeners.open_all(s.bind, s.backlog, s.unix_socket_mode, self.activated)
        path.listen(opened)
        path.after_reply = after_reply(self.loop, path, opened, path.observer is not None)
        self._addresses, self._label, self._address = listeners.announce(opened, self.activated)

    def _serving_line(self) -> str:
        return "serving %s on %s with %s" % (self.name, self._label,
                                             logs.counted(self.supervisor.size, "worker"))

    def _sweep(self) -> None:
        self.swept = time.monotonic()
        self.path.sweep()

    def _listening(self) -> list[Any]:
        """The sockets this producer listens on besides the remote endpoint: a remote
        worker's HELLO may name none of them."""
        socks: list[Any] = [listener.sock for listener in self.path.listeners]
        observer = self.path.observer
        if observer is not None and observer.metrics is not None:
            socks.append(observer.metrics.server.sock)
        return socks

    def _make_consumer(self) -> Consumer:
        if self.spec:
            return as_consumer(self.spec)     # imported by this generation's preloader
        assert self.consumer is not None
        return self.consumer

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, finish the requests received (up to ``timeout``, by default the
        graceful timeout), then stop the workers. Any thread may call it."""
        if self.thread is None:         # never started
            self.state = State.STOPPED
            self.stopped.set()
            return
        if THREAD_IDENT() != self.thread:
            self._stop_from(timeout)
            return
        if self.state in (State.DRAINING, State.STOPPED):
            self.stopped.wait()
            return
        self.state = State.DRAINING
        self.path.closing = self.path.draining = True
        self.notifier.stopping("stopping: finishing %d requests" % len(self.path.conns))
        if self.path.refuse_handshakes():
            self._take_handshakes_under_way()
        self.path.stop_accepting()
        if self.path.conns:
            timeout = self.settings.graceful_timeout if timeout is None else timeout
            log.info("stopping: finishing %d requests (up to %.1f s)", len(self.path.conns),
                     timeout)
            self._drained.wait(timeout)
        self.path.fail_all("refused", "the server stopped before this request was answered")
        self._close()
        log.info("stopped")

    def _take_handshakes_under_way(self) -> None:
        """New handshakes are refused: accept on until none has come for ``QUIET_ACCEPTS``
        (they take a round trip), ``HANDSHAKES_UNDER_WAY`` at most."""
        deadline = time.monotonic() + HANDSHAKES_UNDER_WAY
        while time.monotonic() < deadline:
            accepted = self.path.accepted
            gevent.sleep(QUIET_ACCEPTS)
            if self.path.accepted == accepted:
                return

    def _stop_from(self, timeout: float | None) -> None:
        """stop() called from a thread other than the one whose hub serves: run it there."""
        done = threading.Event()

        def stop_then_tell() -> None:
            try:
                self.stop(timeout)
            finally:
                done.set()
        if self.state is not State.STOPPED:
            self.loop.run_callback_threadsafe(gevent.spawn, stop_then_tell)
            # Its hub may end before the callback runs, if a stop was under way already.
            while not done.wait(0.1) and not self.stopped.is_set():
                pass

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
        self.reload_watch.stop()
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
            self.reload_watch.start()

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
        return self.path.status() if self.thread is not None else {}

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


def in_main_thread() -> bool:
    """Whether this is the thread that receives signals (greenlets and patching aside)."""
    try:
        signal.set_wakeup_fd(signal.set_wakeup_fd(-1))
    except ValueError:
        return False
    return True
