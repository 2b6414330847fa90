"""The producer: accepts connections, reads each frame, hands requests to free workers and
writes the replies back.

Everything here runs in gevent's hub as libev watcher callbacks: an io watcher on the
listener, one on each client socket while it is read or written, and one on the sink's
ZeroMQ FD. There is no greenlet, gevent socket or zmq.green wrapper per request: on small
requests those cost more of the producer's CPU than all the rest.

Dispatch: the backlog lives here. A request goes to the ready worker holding the fewest
requests, and only while that worker holds fewer than ``window`` and has not said it is
stuck on a slow one (see worker.py). Each worker has a PUSH socket of its own, so the
producer always knows where every request is.
"""

import _socket
import collections
import errno
import itertools
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import time
import gc

import gevent
import greenlet
import gevent.event
import zmq

from . import forkserver, framing
from .consumer import Consumer, as_consumer, split_spec
from .supervisor import Supervisor
from .forkserver import set_title
from .observe import Observer
from .remote import DEFAULT_HEARTBEAT, MISSED_BEATS, RemoteSink
from .worker import Worker, prepare_process, sink_endpoint, worker_endpoint

log = logging.getLogger("gaspar2")

READ, WRITE = 1, 2
RESET_ON_CLOSE = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a RST
FIN_ON_CLOSE = struct.pack("ii", 0, 0)
ACCEPTS_PER_WAKEUP = 64
DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
FORKSERVER_EXIT_WAIT = forkserver.STOP_GRACE + 5.0
SWEEP_INTERVAL = 0.1           # how often timeouts are checked
ACCEPT_PAUSE = 0.1             # out of file descriptors: wait this long before accepting again


class Connection:
    """One client connection and its single request."""

    __slots__ = ("sock", "peer", "reader", "watcher", "payload", "request_id", "worker", "reply",
                 "since", "accepted", "served_by", "size_out")

    def __init__(self, sock, peer, max_size, now):
        self.sock = sock
        self.peer = peer
        self.since = now        # accepted at; once the frame is in, received at
        self.accepted = now
        self.served_by = None   # the id of the worker that answered
        self.size_out = 0
        self.reader = framing.FrameReader(max_size)
        self.watcher = None
        self.payload = None
        self.request_id = None
        self.worker = None
        self.reply = None

    def __str__(self):
        if isinstance(self.peer, tuple):
            return "%s:%s" % self.peer[:2]
        return str(self.peer)


class Producer:
    """Serves ``consumer`` on ``host:port`` with ``processes`` worker processes."""

    def __init__(self, consumer, port=10123, processes=None, host="127.0.0.1", *,
                 max_message_size=framing.DEFAULT_MAX_MESSAGE_SIZE, graceful_timeout=30.0,
                 timeout=None, worker_timeout=None, read_timeout=10.0, max_connections=10000,
                 backlog=2048, max_requests=None, max_requests_jitter=0,
                 metrics=None, access_log=False, remote_workers=None, curve_secret_key=None,
                 curve_authorized=None, insecure_remote=False, heartbeat=DEFAULT_HEARTBEAT,
                 window=8, giveback_after=0.005, name=None):
        if isinstance(consumer, str):
            split_spec(consumer)
            self.spec, self.consumer = consumer, None   # each worker imports it afresh
        else:
            self.spec, self.consumer = None, as_consumer(consumer)
        self.host = host
        self.port = port
        self.processes = processes or os.cpu_count() or 1
        self.max_message_size = max_message_size
        self.graceful_timeout = graceful_timeout
        self.timeout = timeout
        self.worker_timeout = worker_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.listen_backlog = backlog
        self.window = window
        self.giveback_after = giveback_after
        self.name = name or self.spec or describe(self.consumer)
        self.address = None
        self.running = gevent.event.Event()
        self.stopped = gevent.event.Event()
        self.conns = set()                      # every open client connection
        self.backlog = collections.deque()      # complete requests waiting for a worker
        self.jobs = {}                          # request id -> connection, at a worker
        self.ids = itertools.count(1)
        self.supervisor = Supervisor(self, self.processes, max_requests, max_requests_jitter)
        self.listener = None
        self.remote_options = (remote_workers, curve_secret_key, curve_authorized, insecure_remote)
        self.remote = None          # RemoteSink, when remote workers may join
        self.heartbeat = heartbeat
        self.metrics_address = metrics
        self.access_log = access_log
        self.observer = None        # Observer when metrics or the access log are on
        self.accepting = False
        self.accepted = 0
        self._dispatch_pending = False
        self._stopping = False
        self._startup = gevent.event.Event()
        self._startup_error = None
        self._drained = gevent.event.Event()
        self._forkserver_exited = gevent.event.Event()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, blocking=True):
        """Start the workers and serve; with ``blocking=False`` return once serving."""
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        if blocking:
            self._install_signal_handlers()
            self.stopped.wait()

    def _open(self):
        self.loop = gevent.get_hub().loop
        raise_open_file_limit(self.max_connections)
        self.ipc_dir = make_ipc_dir()
        # Fork the fork server first: no listener and no ZeroMQ context exist yet.
        self.fork_pid, channel = forkserver.start(self._run_worker, "gaspar2 forkserver %s" % self.name)
        self.ctx = zmq.Context()
        self.sink = self.ctx.socket(zmq.PULL)
        self.sink.linger = 0
        self.sink.bind(sink_endpoint(self.ipc_dir))
        self.sink_watcher = self.loop.io(self.sink.FD, READ)
        self.sink_watcher.start(self._on_sink, self.sink)
        if self.remote_options[0]:
            self.remote = RemoteSink(self.ctx, *self.remote_options)
            self.remote_watcher = self.loop.io(self.remote.sock.FD, READ)
            self.remote_watcher.start(self._on_sink, self.remote.sock)
            log.info("remote workers may join at %s", self.remote.endpoint)
        self.supervisor.attach(self.loop, self.ctx, self.ipc_dir, channel, self.fork_pid)
        for _ in range(self.processes):
            self.supervisor.spawn()
        self._startup.wait()
        if self._startup_error:
            raise RuntimeError(self._startup_error)
        self.listener = self._listen()
        self.address = self.listener.getsockname()[:2]
        self.accept_watcher = self.loop.io(self.listener.fileno(), READ)
        self._resume_accepting()
        if self.metrics_address or self.access_log:
            self.observer = Observer(self, self.metrics_address, self.access_log)
        self.sweeper = self.loop.timer(SWEEP_INTERVAL, SWEEP_INTERVAL)
        self.sweeper.start(self._sweep)
        self.running.set()
        set_title("gaspar2 producer %s %s:%d" % ((self.name,) + tuple(self.address)))
        log.info("gaspar2 serving %s on %s:%d with %d workers",
                 self.name, self.address[0], self.address[1], self.processes)

    def _listen(self):
        family, kind, proto, _, addr = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = _socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this: unless a reply was written in full, closing one,
        # even by the kernel when this process dies, resets it instead of faking an EOF.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        sock.bind(addr)
        sock.listen(self.listen_backlog)
        sock.setblocking(False)
        self.family = family
        return sock

    def _run_worker(self, worker_id, slot, parent):
        """Runs in a fresh worker process, forked by the fork server."""
        prepare_process("gaspar2 worker %d %s" % (worker_id, self.name))
        worker = Worker(self._make_consumer, worker_id, worker_endpoint(self.ipc_dir, worker_id),
                        sink_endpoint(self.ipc_dir), parent, self.giveback_after,
                        self.supervisor.progress, slot)
        return worker.run()

    def _make_consumer(self):
        return as_consumer(self.spec) if self.spec else self.consumer

    def stop(self, timeout=None):
        """Stop accepting, finish the requests received (up to ``timeout``, by default the
        graceful timeout), then stop the workers."""
        if self._stopping:
            self.stopped.wait()
            return
        self._stopping = True
        self._stop_accepting()
        if self.conns:
            timeout = self.graceful_timeout if timeout is None else timeout
            log.info("stopping: finishing %d requests (up to %.1f s)", len(self.conns), timeout)
            self._drained.clear()
            if self.conns:
                self._drained.wait(timeout)
        for conn in list(self.conns):
            self._fail(conn, "refused", "the server stopped before this request was answered")
        self._close()
        log.info("stopped")

    def _stop_accepting(self):
        """Close the listener, taking in first the connections the kernel already completed:
        their clients have sent their requests, and closing would reset them."""
        if self.listener is not None:
            self._pause_accepting()
            while self._accept_one():
                pass
            self._schedule_dispatch()
            self.listener.close()
            self.listener = None

    def _pause_accepting(self):
        self.accepting = False
        self.accept_watcher.stop()

    def _resume_accepting(self):
        if self.listener is not None and not self._stopping:
            self.accepting = True
            self.accept_watcher.start(self._on_accept)

    def _close(self):
        """Stop the fork server and its workers, release ZeroMQ and the ipc directory."""
        self._stopping = True
        self.supervisor.close_channel()
        if getattr(self, "fork_pid", None):
            self._forkserver_exited.wait(FORKSERVER_EXIT_WAIT)
            self._reap_forkserver()
        if getattr(self, "sweeper", None) is not None:
            self.sweeper.stop()
        if self.remote is not None:
            self.remote_watcher.stop()
            self.remote.close()
        if getattr(self, "ctx", None) is not None:
            self.sink_watcher.stop()
            self.ctx.destroy(linger=0)
        shutil.rmtree(getattr(self, "ipc_dir", ""), ignore_errors=True)
        self.running.clear()
        self.stopped.set()

    def _reap_forkserver(self):
        try:
            if not self._forkserver_exited.is_set():
                os.kill(self.fork_pid, signal.SIGKILL)
            os.waitpid(self.fork_pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass        # already reaped (gevent's child watcher may do it)

    def _install_signal_handlers(self):
        gevent.signal_handler(signal.SIGTERM, self._on_stop_signal, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self._on_stop_signal, "SIGINT")
        gevent.signal_handler(signal.SIGQUIT, self._on_quit_signal)
        gevent.signal_handler(signal.SIGUSR1, self.log_status)
        gevent.signal_handler(signal.SIGHUP, self._on_reload_signal)
        gevent.signal_handler(signal.SIGTTIN, self._on_resize_signal, +1)
        gevent.signal_handler(signal.SIGTTOU, self._on_resize_signal, -1)

    def _on_stop_signal(self, name):
        if self._stopping:
            log.info("%s again: stopping now", name)
            self._drained.set()
            return
        log.info("%s: stopping gracefully", name)
        gevent.spawn(self.stop)

    def _on_reload_signal(self):
        if not self._stopping:
            log.info("SIGHUP: replacing every worker with a fresh one")
            self.supervisor.reload()

    def _on_resize_signal(self, delta):
        if not self._stopping:
            self.supervisor.resize(delta)

    def _on_quit_signal(self):
        log.info("SIGQUIT: stopping now")
        self._drained.set()
        gevent.spawn(self.stop, 0)

    def status(self):
        """Counts for operators (SIGUSR1 logs them) and for the tests' leak checks."""
        return {
            "accepted": self.accepted,
            "connections": len(self.conns),
            "reading": sum(1 for conn in self.conns if conn.reader is not None),
            "waiting": len(self.backlog),
            "at_workers": len(self.jobs),
            "workers": self.supervisor.ready_count(),
            "greenlets": sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet)),
            "open_files": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1,
        }

    def log_status(self):
        log.info("status: %s", " ".join("%s=%s" % item for item in self.status().items()))

    # -- events from the supervisor --------------------------------------------------------

    def worker_ready(self, worker):
        if not self._startup.is_set() and self.supervisor.ready_count(True) == self.processes:
            self._startup.set()
        self._schedule_dispatch()

    def worker_lost(self, worker, cause, kind):
        """A worker exited: fail the requests it ran, give the others to the rest."""
        if self.observer is not None:
            self.observer.worker_exited(kind)
        self._on_sink(self.sink)    # replies it sent before it died are not lost
        if self.remote is not None:
            self._on_sink(self.remote.sock)
        if not self._startup.is_set():
            self._startup_error = "%r %s while starting" % (worker, cause)
            self._startup.set()
        if worker.remote:      # it holds one request at most, and no slot says if it began
            started, ran = next(iter(worker.jobs), 0), bool(worker.jobs)
        else:
            started, _ = self.supervisor.last_started(worker)
            ran = started in worker.jobs
        requeue = []
        for request_id, conn in list(worker.jobs.items()):
            del self.jobs[request_id]
            conn.worker = None
            if ran:
                self._fail(conn, "worker_died", "%r %s while running this request", worker, cause)
                ran = request_id != started
            elif conn in self.conns:
                requeue.append(conn)
        worker.jobs.clear()
        self.backlog.extendleft(reversed(requeue))
        level = logging.INFO if self._stopping else logging.WARNING
        log.log(level, "%r %s", worker, cause)
        self._schedule_dispatch()

    def forkserver_gone(self):
        self._forkserver_exited.set()
        if not self._stopping:
            log.error("the fork server died: stopping")
            self._startup_error = self._startup_error or "the fork server died"
            self._startup.set()
            gevent.spawn(self.stop, 0)

    # -- client connections ----------------------------------------------------------------

    def _on_accept(self):
        for _ in range(ACCEPTS_PER_WAKEUP):
            if len(self.conns) >= self.max_connections:
                self._pause_accepting()     # the rest wait in the kernel's listen queue
                break
            if not self._accept_one():
                break
        self._dispatch()        # what this wake-up read goes out together, now

    def _accept_one(self):
        """Accept one connection and read what it sent; False when there is none."""
        try:
            fd, peer = self.listener._accept()
        except BlockingIOError:
            return False
        except OSError as exc:
            self._accept_failed(exc)
            return False
        # Naming the family spares three getsockopt calls; every read and write passes
        # MSG_DONTWAIT, which spares making the socket non-blocking.
        sock = _socket.socket(self.family, socket.SOCK_STREAM, 0, fd)
        conn = Connection(sock, peer, self.max_message_size, self.loop.now())
        self.conns.add(conn)
        self.accepted += 1
        self._read(conn)            # the frame often arrives with the handshake
        return True

    def _accept_failed(self, exc):
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            log.error("accept failed: %s; pausing accepts for %.1f s (%d connections open)",
                      exc, ACCEPT_PAUSE, len(self.conns))
            self._pause_accepting()
            timer = self.loop.timer(ACCEPT_PAUSE)
            timer.start(self._resume_accepting)
        elif exc.errno not in (errno.ECONNABORTED, errno.EPROTO, errno.EINTR):
            log.error("accept failed: %s", exc)

    def _on_readable(self, conn):
        if self._read(conn):
            self._schedule_dispatch()

    def _read(self, conn):
        """Read what the client sent; True once its request joined the backlog."""
        try:
            complete = conn.reader.read_from(conn.sock)
        except BlockingIOError:
            complete = False
        except framing.FrameError as exc:
            self._fail(conn, "bad_frame", "bad frame: %s", exc)
            return False
        except OSError as exc:
            self._fail(conn, "bad_frame", "read failed: %s", exc)
            return False
        if not complete:
            if conn.watcher is None:
                conn.watcher = self.loop.io(conn.sock.fileno(), READ)
                conn.watcher.start(self._on_readable, conn)
            return False
        if conn.watcher is not None:
            conn.watcher.stop()
        conn.payload = conn.reader.payload
        conn.reader = None
        conn.since = self.loop.now()
        conn.request_id = next(self.ids)
        self.backlog.append(conn)
        return True

    def _write(self, conn, view):
        try:
            sent = conn.sock.send(view, DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(conn, "client_gone", "client gone before its reply was written: %s", exc)
            return
        if sent == len(view):
            self._finish(conn)
            return
        conn.reply = view[sent:]
        if conn.watcher is not None:
            conn.watcher.close()
        conn.watcher = self.loop.io(conn.sock.fileno(), WRITE)
        conn.watcher.start(self._on_writable, conn)

    def _on_writable(self, conn):
        conn.watcher.stop()
        self._write(conn, conn.reply)

    def _finish(self, conn):
        """Reply written: close in order (FIN)."""
        self._close_conn(conn, "ok", FIN_ON_CLOSE)

    def _fail(self, conn, outcome, reason, *args):
        """Log why, then abort the connection so the client sees a reset, not a reply."""
        if conn not in self.conns:
            return
        quiet = args and str(args[0]).startswith("closed after 0 of 4")   # a port probe
        log.log(logging.INFO if quiet else logging.WARNING, "%s: " + reason, conn, *args)
        self._close_conn(conn, outcome, RESET_ON_CLOSE)

    def _close_conn(self, conn, outcome, linger):
        if self.observer is not None:
            self.observer.request_done(conn, outcome, self.loop.now())
        if conn.watcher is not None:
            conn.watcher.close()
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        except OSError:
            pass
        conn.sock.close()
        self._forget(conn)

    def _forget(self, conn):
        """The connection is closed. A request at a worker stays on its books until the
        worker answers or dies: the worker is busy with it either way."""
        self.conns.discard(conn)
        conn.payload = conn.reply = None
        if not self.accepting and len(self.conns) < self.max_connections:
            self._resume_accepting()
        if self._stopping and not self.conns:
            self._drained.set()

    # -- dispatch and replies --------------------------------------------------------------

    def _schedule_dispatch(self):
        """Dispatch at the end of this loop iteration, so that requests read by several
        watchers go out together."""
        if not self._dispatch_pending and self.backlog:
            self._dispatch_pending = True
            self.loop.run_callback(self._scheduled_dispatch)

    def _scheduled_dispatch(self):
        self._dispatch_pending = False
        self._dispatch()

    def _dispatch(self):
        backlog = self.backlog
        batches = {}
        while backlog:
            worker = self._least_loaded(batches)
            if worker is None:
                break
            conn = backlog.popleft()
            if conn not in self.conns:
                continue
            conn.worker = worker
            worker.jobs[conn.request_id] = conn
            self.jobs[conn.request_id] = conn
            batches.setdefault(worker, []).append(conn)
        for worker, conns in batches.items():
            self._send(worker, conns)
            worker.assigned += len(conns)
            if worker.lifetime is not None and worker.assigned >= worker.lifetime:
                self.supervisor.retire(worker, "took %d requests (max_requests)" % worker.assigned)

    def _least_loaded(self, batches):
        """The free worker holding the fewest requests. A worker is refilled only once it
        is down to half its window, so that under load it takes several requests per
        message instead of one per reply."""
        best = None
        for worker in self.supervisor.workers.values():
            held = len(worker.jobs)
            window = 1 if worker.remote else self.window
            if (worker.ready and worker.stuck_on is None and not worker.retiring
                    and held < window and (worker in batches or held <= window // 2)
                    and (best is None or held < len(best.jobs))):
                best = worker
        return best

    def _send(self, worker, conns):
        frames = [framing.pack_ids([conn.request_id for conn in conns])]
        frames.extend(conn.payload for conn in conns)
        small = sum(len(conn.payload) for conn in conns) < framing.ZERO_COPY_MIN
        try:
            framing.send_frames(worker.push, frames, framing.NOBLOCK, copy=small)
        except zmq.Again:
            log.error("%r cannot take requests (its queue is full): requeued", worker)
            for conn in conns:
                del worker.jobs[conn.request_id], self.jobs[conn.request_id]
                conn.worker = None
            self.backlog.extendleft(reversed(conns))

    def _on_sink(self, sink):
        """Handle everything the workers sent; ZeroMQ's FD is edge-triggered, so drain it."""
        while sink.getsockopt(framing.EVENTS) & framing.POLLIN:
            frames = framing.recv_frames(sink, framing.NOBLOCK)
            head = frames[0].bytes
            kind = head[:1]
            if kind == framing.REPLY:
                self._on_reply(framing.KIND_ID.unpack(head)[1], frames[1])
            elif kind == framing.ERROR:
                self._on_error(framing.KIND_ID.unpack(head)[1], frames[1])
            elif kind == framing.GIVEBACK:
                self._on_giveback(head, frames[1])
            elif kind == framing.HEARTBEAT:
                self.supervisor.heard(framing.KIND_ID.unpack(head)[1], self.loop.now())
            elif kind == framing.HELLO:
                _, worker_id, pid = framing.HELLO_FIELDS.unpack(head)
                if sink is self.sink:
                    self.supervisor.hello(worker_id, pid)
                elif len(frames) == 3:
                    self.supervisor.hello_remote(worker_id, pid, frames[1].bytes.decode(),
                                                 frames[2].bytes, self.remote, self.loop.now())
        self._dispatch()

    def _take(self, request_id):
        """Take a request off its worker's books; its connection, or None if that is gone."""
        conn = self.jobs.pop(request_id, None)
        if conn is None:
            return None
        worker = conn.worker
        del worker.jobs[request_id]
        conn.served_by = worker.id
        if worker.stuck_on == request_id:
            worker.stuck_on = None
        if worker.retiring and not worker.jobs:
            self.supervisor.kill(worker, signal.SIGTERM)
        conn.worker = None
        if conn not in self.conns:
            log.info("dropped the late answer to request %d from %s: its client is gone",
                     request_id, conn)
            return None
        return conn

    def _on_reply(self, request_id, body):
        conn = self._take(request_id)
        if conn is not None:
            conn.size_out = len(body)
            self._write(conn, body.buffer)

    def _on_error(self, request_id, text):
        conn = self._take(request_id)
        if conn is not None:
            self._fail(conn, "handler_error", "handler failed in %s", text.bytes.decode("utf-8", "replace"))

    def _on_giveback(self, head, ids):
        """A worker is stuck on a slow request: take back what it holds but has not begun."""
        _, worker_id, stuck_id = framing.GIVEBACK_FIELDS.unpack(head)
        returned = []
        for request_id in framing.unpack_ids(ids.bytes):
            conn = self.jobs.pop(request_id, None)
            if conn is not None:
                del conn.worker.jobs[request_id]
                conn.worker = None
                if conn in self.conns:
                    returned.append(conn)
        self.backlog.extendleft(reversed(returned))
        worker = self.supervisor.workers.get(worker_id)
        if worker is not None and stuck_id in worker.jobs:
            worker.stuck_on = stuck_id

    # -- timeouts ----------------------------------------------------------------------------

    def _sweep(self):
        """Enforce read_timeout, timeout and worker_timeout; runs every SWEEP_INTERVAL."""
        now = self.loop.now()
        for conn in list(self.conns):
            if conn.reader is not None:
                if self.read_timeout is not None and now - conn.since > self.read_timeout:
                    self._fail(conn, "timeout", "no whole frame within %s s (read_timeout)",
                               self.read_timeout)
            elif conn.reply is None and self.timeout is not None and now - conn.since > self.timeout:
                self._fail(conn, "timeout", "no answer within %s s (timeout)", self.timeout)
        if self.worker_timeout is not None:
            self._kill_runaway_workers()
        if self.remote is not None:
            self.supervisor.check_remote(now, self.heartbeat, MISSED_BEATS)

    def _kill_runaway_workers(self):
        now = time.monotonic()
        for worker in self.supervisor.local_workers():
            request_id, started = self.supervisor.last_started(worker)
            if (request_id in worker.jobs and not worker.killed
                    and now - started > self.worker_timeout):
                log.warning("%r has run one request for %.1f s (worker_timeout %s s): killing it",
                            worker, now - started, self.worker_timeout)
                worker.killed = True
                self.supervisor.kill(worker, signal.SIGKILL)


def make_ipc_dir():
    """A private directory for the ipc sockets, named after this process; directories
    left by producers that were killed are removed."""
    base = tempfile.gettempdir()
    for name in os.listdir(base):
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == "gaspar2" and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            except PermissionError:
                pass
    return tempfile.mkdtemp(prefix="gaspar2-%d-" % os.getpid())


def describe(consumer):
    handler = consumer.handler if type(consumer).handle is Consumer.handle else None
    thing = handler if handler is not None else type(consumer)
    return "%s:%s" % (getattr(thing, "__module__", "?"), getattr(thing, "__qualname__", "?"))


def raise_open_file_limit(wanted):
    """Raise the soft open-file limit as far as the hard one allows; log what we serve with."""
    try:
        import resource
    except ImportError:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
    level = logging.WARNING if soft < wanted + 64 else logging.INFO
    log.log(level, "open-file limit %d (max_connections %d)", soft, wanted)
