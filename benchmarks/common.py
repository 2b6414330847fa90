"""Pieces shared by the benchmark servers, the runner and the soak test."""

import argparse
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
READY = re.compile(r"serving\b.* on ([0-9.]+):([0-9]+)")
JOIN_AT = re.compile(r"remote workers may join at (tcp://\S+)")
JOINED = re.compile(r"remote worker \S+ \(remote pid \d+\) joined from ")
C_WORKER = os.path.join(ROOT, "client", "c-worker")


def load_handler(spec):
    """``MODULE:ATTR`` -> the callable, the way every server here finds the same handler."""
    module, _, attr = spec.partition(":")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return getattr(importlib.import_module(module), attr)


def server_args(description, workers=False):
    """The command line every Python baseline server takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target", metavar="MODULE:ATTR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--backlog", type=int, default=2048)
    if workers:
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser.parse_args()


def serve_with_workers(description, run_worker, serve):
    """The main of a baseline with forked workers: fork ``--workers`` processes, each running
    ``run_worker(handler, index, ipc_dir)`` (before any ZeroMQ context exists in this
    process), then ``serve(args, ipc_dir, pids)``; the workers are killed and the ipc
    directory removed when it returns."""
    args = server_args(description, workers=True)
    ipc = tempfile.mkdtemp(prefix="gaspar2-bench-")
    handler = load_handler(args.target)
    pids = []
    try:
        for index in range(args.workers):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    run_worker(handler, index, ipc)
                finally:
                    os._exit(1)
            pids.append(pid)
        serve(args, ipc, pids)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        shutil.rmtree(ipc, ignore_errors=True)


def proc_stat(pid):
    """The fields of /proc/PID/stat that follow the command name, or None once it is gone.

    The name, in parentheses, may hold spaces and parentheses itself, so the fields start
    after the last ")": the first one here is field 3 of proc(5), the state.
    """
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 1:].split()


def page_faults(pid):
    """A process's page faults so far, minor and major (fields 10 and 12), or None once it is
    gone."""
    fields = proc_stat(pid)
    return None if fields is None else int(fields[10 - 3]) + int(fields[12 - 3])


def children(pid):
    """The processes whose parent (field 4) is ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = proc_stat(int(name))
            if fields is not None and int(fields[4 - 3]) == pid:
                found.append(int(name))
    return found


def announce(name, host, port):
    """The readiness line the runner waits for (the same shape as gaspar2's log line)."""
    print("%s serving on %s:%d" % (name, host, port), file=sys.stderr, flush=True)


# The C programs the runner builds, by name: their sources. The echo worker is the
# documentation's C example of a program behind ``gaspar2 serve --exec``, as shipped.
PROGRAMS = {"loadgen": os.path.join(HERE, "loadgen.c"),
            "c_echo_server": os.path.join(HERE, "c_echo_server.c"),
            "echo-worker": os.path.join(ROOT, "examples", "workers", "echo-worker.c")}


def build(names=tuple(PROGRAMS), out=BUILD):
    """Compile the C programs with ``cc -O2``; skipped for a binary newer than its source."""
    os.makedirs(out, exist_ok=True)
    for name in names:
        source, binary = PROGRAMS[name], os.path.join(out, name)
        if os.path.exists(binary) and os.path.getmtime(binary) >= os.path.getmtime(source):
            continue
        subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", binary, source], check=True)
    return out


def build_c_worker(out=BUILD):
    """``make`` the C worker library and its example (client/c-worker) into OUT/c-worker/:
    (the example's path, None), or (None, why it cannot be built)."""
    missing = [tool for tool in ("cc", "make", "pkg-config") if shutil.which(tool) is None]
    if missing:
        return None, "needs %s" % ", ".join(missing)
    if subprocess.run(["pkg-config", "--exists", "libzmq"]).returncode:
        return None, "needs libzmq's headers (Debian: libzmq3-dev)"
    where = os.path.join(out, "c-worker")
    done = subprocess.run(["make", "-C", C_WORKER, "BUILD=" + where], capture_output=True,
                          text=True)
    if done.returncode:
        return None, "make -C %s failed: %s" % (C_WORKER, done.stderr.strip()[-300:])
    return os.path.join(where, "gaspar2-worker-echo"), None


class Server:
    """A server process started in its own session, its stderr in a log file.

    Ready means its log shows the "serving ... on HOST:PORT" line; the port comes from there.
    """

    def __init__(self, cmd, log_path, ready_timeout=60.0, cwd=ROOT):
        self.cmd, self.log_path = cmd, log_path
        self.env = env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.port = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                match = READY.search(f.read().decode(errors="replace"))
            if match:
                return int(match.group(2))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not become ready; see %s" % (" ".join(self.cmd), self.log_path))

    def stop(self, timeout=30.0):
        """SIGTERM, then SIGKILL to its process group if it has not exited by the deadline."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RemotePool(Server):
    """A gaspar2 producer with a remote endpoint (``--remote-workers tcp://127.0.0.1:0``, its
    port read from the log) and ``count`` remote workers joined to it, ``worker(endpoint)``
    giving each one's command. The producer must serve ``gaspar2.conformance:handle`` with
    one local worker and a window of 1: that worker is kept busy on one request (marked in a
    file) before any remote worker starts, so that every other request goes to the remote
    ones. Ready means the mark is there and the producer's log shows ``count`` joins; each
    remote worker logs to a file of its own beside the producer's."""

    def __init__(self, cmd, log_path, worker, count, ready_timeout=60.0, cwd=ROOT):
        self.workers, self.work = [], tempfile.mkdtemp(prefix="gaspar2-bench-")
        super().__init__(cmd, log_path, ready_timeout, cwd)
        try:
            self._occupy(ready_timeout)
            endpoint = JOIN_AT.search(self._log()).group(1)
            for index in range(count):
                path = "%s-worker%d.log" % (os.path.splitext(log_path)[0], index + 1)
                with open(path, "wb") as log:
                    self.workers.append(subprocess.Popen(
                        worker(endpoint), cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            self._wait(lambda: len(JOINED.findall(self._log())) >= count, ready_timeout,
                       "%d remote workers joined" % count)
        except BaseException:
            self.stop()
            raise

    def _log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def _wait(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            gone = [p for p in [self.proc, *self.workers] if p.poll() is not None]
            if gone or time.monotonic() > deadline:
                raise RuntimeError("no %s (%s); see %s" % (
                    what, "a process exited" if gone else "%.0f s" % timeout, self.log_path))
            time.sleep(0.05)

    def _occupy(self, timeout):
        """One request that holds the local worker until the producer is gone."""
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        from gaspar2 import client
        from gaspar2.conformance import PREFIX

        mark = os.path.join(self.work, "occupied")

        def hold():
            try:
                client.request("127.0.0.1:%d" % self.port, PREFIX + b"occupy:" + mark.encode())
            except OSError:             # the producer stopped: the point is over
                pass

        threading.Thread(target=hold, daemon=True).start()
        self._wait(lambda: os.path.exists(mark), timeout, "busy local worker")

    def stop(self, timeout=30.0):
        """The producer, then the remote workers, each as ``Server.stop`` does: the requests
        under way are answered before the workers go."""
        status = super().stop(timeout)
        for proc in self.workers:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)
        return status
