"""The fork server: a small process, free of ZeroMQ and client sockets, that forks every worker.

The producer starts it before it opens its listener or a ZeroMQ context, so every worker,
the first ones and every respawn, is forked from the same clean state: it inherits no
client connection, no listening socket and no ZeroMQ context or I/O thread. The fork
server is also the workers' parent: it reaps them and reports each exit at once.

Control channel (a socketpair, one text line per message):
  producer -> fork server: ``spawn ID SLOT`` | ``kill ID SIGNUM``
  fork server -> producer: ``spawned ID PID`` | ``exited ID PID STATUS``
Closing the channel tells the fork server to stop its workers and exit.
"""

import ctypes
import logging
import os
import selectors
import signal
import socket
import stat
import time

log = logging.getLogger("gaspar2.forkserver")

PR_SET_PDEATHSIG = 1
STOP_GRACE = 5.0


def set_title(title):
    """Name this process for ps and top, when setproctitle is installed."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def die_with_parent(parent_pid):
    """Ask Linux to SIGKILL this process when its parent dies; exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass        # not Linux: workers still notice through getppid()
    if os.getppid() != parent_pid:
        os._exit(1)


def close_inherited_sockets(keep):
    """Close every socket fd but ``keep``: client connections, listeners, ZeroMQ's own."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = range(3, os.sysconf("SC_OPEN_MAX"))
    for fd in fds:
        if fd in keep:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


class ForkServer:
    """Runs in the fork server process; never returns."""

    def __init__(self, channel, run_worker):
        self.channel = channel
        self.run_worker = run_worker      # in each new worker: (id, slot, parent pid)
        self.workers = {}                 # pid -> worker id
        self.buffer = b""

    def serve(self):
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *a: None)
        selector = selectors.DefaultSelector()
        selector.register(self.channel, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        self.pipe = (wake_r, wake_w)
        while True:
            for key, _ in selector.select():
                if key.fileobj == wake_r:
                    os.read(wake_r, 4096)
                elif not self._read_commands():
                    self._stop_workers()
                    os._exit(0)
            self._reap()

    def _read_commands(self):
        data = self.channel.recv(65536)
        if not data:
            return False
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            command, *args = line.decode().split()
            if command == "spawn":
                self._spawn(int(args[0]), int(args[1]))
            elif command == "kill":
                self._kill(int(args[0]), int(args[1]))
        return True

    def _spawn(self, worker_id, slot):
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
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
        self.workers[pid] = worker_id
        self._send("spawned %d %d" % (worker_id, pid))

    def _kill(self, worker_id, signum):
        for pid, wid in self.workers.items():
            if wid == worker_id:
                os.kill(pid, signum)

    def _reap(self):
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.workers.pop(pid, None)
            if worker_id is not None:
                self._send("exited %d %d %d" % (worker_id, pid, status))

    def _send(self, line):
        try:
            self.channel.sendall(line.encode() + b"\n")
        except OSError:
            pass          # the producer is gone; EOF on the channel ends this process

    def _stop_workers(self):
        """Producer gone: TERM the workers, wait a little, then KILL what is left."""
        for pid in self.workers:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.workers and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.01)
        for pid in self.workers:
            os.kill(pid, signal.SIGKILL)


def start(run_worker, title):
    """Fork the fork server; returns (pid, the producer's end of the control channel)."""
    ours, theirs = socket.socketpair()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        theirs.close()
        return pid, ours
    status = 1
    try:
        ours.close()
        die_with_parent(parent)
        close_inherited_sockets(keep={theirs.fileno(), 0, 1, 2})
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
        set_title(title)
        ForkServer(theirs, run_worker).serve()
    except BaseException:
        log.exception("fork server crashed")
    finally:
        os._exit(status)
