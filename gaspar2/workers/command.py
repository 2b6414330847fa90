"""A handler that is a program: each worker process runs one long-lived child and serves
every request it claims through it. Runs in the worker processes (local, and a ``gaspar2
worker`` group's); the producer and the command line only split and check the command line.

The child's protocol is the client's own frame, on its standard input and output, one
request at a time. gaspar2 writes a 4-byte network-order length and the payload; the child
answers with one byte, ``0`` (a reply) or ``1`` (this request failed: the body is a message
and the child serves on), a 4-byte network-order length and the body. Anything else on its
standard output, an answer longer than ``max_reply_size``, an answer before the whole
request was read, and end of file are a broken child: the request fails, the child is
killed and reaped (its exit status or signal logged) and another is started, at once, or
after the workers' back-off when it died before answering anything (``YOUNG``).

Why the worker and not the supervisor restarts it: a child that breaks costs its worker one
fork and exec, and the worker keeps its ZeroMQ sockets, its seat and its progress slot.
While it waits out a back-off and starts the new child, its progress slot still shows the
failed request as running, so the producer takes back what the worker holds, as from any
slow worker, and sends it nothing until the child runs; ``worker_timeout`` bounds that wait
like any request. The child cannot outlive its worker (Linux's parent-death signal, set
before it execs); ``timeout``, ``worker_timeout``, ``max_requests``, reloads and stops
replace the worker, and the child with it.

The worker waits on the child's three pipes at once, so a child that writes its standard
error while it reads its request, or answers while the request is still being written,
never deadlocks it. A worker that had to wait for the request it runs (a quiet machine)
first waits for the answer awake, yielding its CPU between looks, for at most 100 us: a
sleeping process's wake-up costs about as much as a quick program's whole answer. A yield
that runs something else, or an answer that takes longer, ends that and spaces out the
next tries (``AwakeWaits``); with requests queued it sleeps at once.

Standard error is logged a line at a time, tagged with the worker, at most
``LINES_PER_SECOND`` lines a second; more are counted, not logged, so a child flooding it
costs its worker a read per 64 KiB.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import re
import shlex
import shutil
import signal
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import zmq
from gevent.monkey import get_original

from ..consumer import Consumer
from ..protocol.wire import HEADER
from .process import Backoff

log = logging.getLogger("gaspar2.program")

ANSWER = struct.Struct("!BI")   # the answer's head: kind, length
REPLY, FAILURE = 0, 1
WORKER_ID = "GASPAR2_WORKER_ID"
WID = re.compile(r"\$(?:WID\b|\{WID\})")
YOUNG = 1.0                 # a child that breaks sooner, having answered nothing, failed to start
EXIT_GRACE = 0.5            # a child that closed its stdout has this long to exit on its own
STOP_GRACE = 1.0            # at a worker's exit, its child has this long to leave after EOF
LINES_PER_SECOND = 1000     # stderr lines logged per worker, at most
MAX_LINE = 8192             # a longer stderr line is logged in pieces this long
READ_SIZE = 65536
PIPE_SIZE = 1 << 20         # asked of the kernel for the request and answer pipes
FIRST_GROWTH = 65536        # an answer's buffer grows by at least this much, at most doubling
PR_SET_PDEATHSIG = 1
IDLE_FLAGS = int(zmq.POLLIN)
# A sleeping worker's wake-up costs more than a quick program's whole answer (about 20 us
# on a virtual machine whose idle CPUs halt), so the worker first waits awake: see
# Child._look_awake.
AWAKE_FOR = 100e-6          # seconds a worker looks for an answer before it sleeps
CROWDED = 15e-6             # a yield that took longer ran something else
CROWDED_SKIP = 64           # requests that sleep at once after misses, at most
YIELD = os.sched_yield
# pyzmq's own receive, under the Python-level wrapper (socket, flags, copy).
RECV: Callable[[zmq.SyncSocket, int, bool], zmq.Frame] = zmq.backend.Socket.recv  # type: ignore[assignment]

# The worker blocks for real, even in a process that gevent's monkey patching changed.
POLL, SLEEP = get_original("select", "poll"), get_original("time", "sleep")
WAITPID, POPEN = get_original("os", "waitpid"), get_original("subprocess", "Popen")
# What the original Popen looks up in its module, which monkey patching replaces (gevent
# sets _fork_exec to None there): see unpatch_subprocess.
POPEN_GLOBALS = ("_fork_exec", "_USE_POSIX_SPAWN", "_use_posix_spawn")
POLLIN, POLLOUT = 0x001, 0x004
POLLERR, POLLHUP = 0x008, 0x010
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None
# What workers ignore (see worker.prepare_process), which a child would inherit through exec.
RESET_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR2)


def unpatch_subprocess() -> None:
    """In a worker of a monkey-patched program, give the subprocess module back what the
    original Popen needs of it. Only a worker that serves a program calls this; it runs no
    other Python code, and blocks for real."""
    module = sys.modules.get("subprocess")
    if module is None:
        return
    for name in POPEN_GLOBALS:
        try:
            setattr(module, name, get_original("subprocess", name))
        except AttributeError:
            pass            # not in this Python's subprocess


class ProgramError(Exception):
    """The request failed in the program: ``text`` says why. ``broken``: the child is gone
    and the worker must start another before it takes more (``Command.recover``)."""

    def __init__(self, text: str, broken: bool = False):
        super().__init__(text)
        self.text = text
        self.broken = broken


class BadAnswer(Exception):
    """What the child wrote on its standard output is not an answer."""


# -- pure logic: the command line, $WID, the answers, the stderr lines ------------------------

def split(line: str) -> list[str]:
    """A command line split as a POSIX shell splits words (quotes, backslashes), with no
    expansion: ``$WID`` stays for ``substitute``, and nothing runs a shell."""
    words = shlex.split(line)
    if not words:
        raise ValueError("an empty command line")
    return words


def substitute(argv: Sequence[str], worker_id: int) -> list[str]:
    """``$WID`` (or ``${WID}``) in each argument replaced by the worker's id; ``$WIDTH``
    and other longer names are left alone."""
    wid = str(worker_id)
    return [WID.sub(wid, arg) for arg in argv]


def problem(program: str, env: Mapping[str, str] | None = None,
            cwd: str | None = None) -> str | None:
    """Why ``program`` cannot be started, looked up as execvp looks it up (``PATH`` from
    ``env`` when given, a name with a slash from ``cwd``); None when it can."""
    if "/" in program:
        path = os.path.join(cwd or os.getcwd(), program)
        if not os.path.exists(path):
            return "no such file: %s" % program
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            return "not an executable file: %s" % program
        return None
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    if shutil.which(program, path=search) is None:
        return "no program named %r on PATH" % program
    return None


class AnswerReader:
    """One answer, fed as its bytes arrive: the head into ``feed``, then the body read
    straight into its own buffer (``into``, ``filled``), so a large reply is held once. The
    buffer grows as the bytes come (at most doubling), never to a length the child only
    announced.

    A head whose kind is not 0 or 1, or whose length is over ``limit``, raises BadAnswer
    as soon as its five bytes are in; nothing after the answer is taken (``feed`` says how
    much it used)."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.head = bytearray()
        self.kind = -1
        self.length = 0
        self.body = bytearray()
        self.got = 0
        self.done = False

    def feed(self, data: bytes | memoryview) -> int:
        """Take what the answer needs of ``data``; how many bytes that was."""
        used = 0
        if self.kind < 0:
            used = min(ANSWER.size - len(self.head), len(data))
            self.head += data[:used]
            if len(self.head) < ANSWER.size:
                return used
            self._start()
        if not self.done:
            take = min(self.length - self.got, len(data) - used)
            self.body[self.got:self.got + take] = data[used:used + take]
            used += take
            self.filled(take)
        return used

    def _start(self) -> None:
        kind, length = ANSWER.unpack(self.head)
        if kind not in (REPLY, FAILURE):
            raise BadAnswer("an answer starts with 0 or 1, not %r" % bytes(self.head))
        if self.limit is not None and length > self.limit:
            raise BadAnswer("an answer of %d bytes, over max_reply_size %d"
                            % (length, self.limit))
        self.kind = kind
        self.length = length
        self.done = length == 0

    def into(self) -> memoryview | None:
        """Where the rest of the body may be read directly, once the head is known."""
        if self.kind < 0 or self.done:
            return None
        if self.got == len(self.body):
            self.body += bytes(min(self.length - self.got, max(self.got, FIRST_GROWTH)))
        return memoryview(self.body)[self.got:]

    def filled(self, count: int) -> None:
        self.got += count
        self.done = self.got == self.length


class Lines:
    """Standard error cut into lines; a line longer than ``longest`` comes in pieces, so a
    child that never writes a newline costs bounded memory."""

    def __init__(self, longest: int = MAX_LINE):
        self.longest = longest
        self.partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.partial += data
        lines = []
        start = 0
        while True:
            end = self.partial.find(b"\n", start, start + self.longest + 1)
            if end < 0:
                if len(self.partial) - start <= self.longest:
                    break
                end = start + self.longest
                lines.append(bytes(self.partial[start:end]))
                start = end
                continue
            lines.append(bytes(self.partial[start:end]))
            start = end + 1
        del self.partial[:start]
        return lines

    def rest(self) -> list[bytes]:
        """What is left when the pipe closes: a last line with no newline."""
        line, self.partial = bytes(self.partial), bytearray()
        return [line] if line else []


class LineBudget:
    """At most ``per_second`` lines a second; says how many it left out, once it may."""

    def __init__(self, per_second: int = LINES_PER_SECOND,
                 clock: Callable[[], float] = time.monotonic):
        self.per_second = per_second
        self.clock = clock
        self.second = float("-inf")
        self.used = 0
        self.skipped = 0

    def take(self) -> tuple[bool, int]:
        """(whether this line may be logged, lines left out before it to report)."""
        now = self.clock()
        if now - self.second >= 1.0:
            self.second, self.used = now, 0
        if self.used >= self.per_second:
            self.skipped += 1
            return False, 0
        self.used += 1
        skipped, self.skipped = self.skipped, 0
        return True, skipped


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        try:
            name = signal.Signals(os.WTERMSIG(status)).name
        except ValueError:
            name = "signal %d" % os.WTERMSIG(status)
        return "was killed by %s" % name
    return "exited with status %d" % os.WEXITSTATUS(status)


# -- the child ---------------------------------------------------------------------------------

def tie_to(parent: int) -> None:
    """In the child, before exec: die with the worker, and start with default signals."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)
    for sig in RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


class AwakeWaits:
    """When a worker may wait for its child's answer awake (``Child._look_awake``): after a
    wait that missed (the CPU was wanted, or the answer was slow), the next 1, 2, 4 ... up
    to ``CROWDED_SKIP`` requests sleep at once, so a busy machine or a slow program pays
    for one look in that many; an answer caught awake starts the count over."""

    def __init__(self) -> None:
        self.asleep = 0         # requests left that sleep at once
        self.after_miss = 1     # how many the next miss sends to sleep

    def allowed(self) -> bool:
        if self.asleep:
            self.asleep -= 1
            return False
        return True

    def missed(self) -> None:
        self.asleep, self.after_miss = self.after_miss, min(2 * self.after_miss, CROWDED_SKIP)

    def caught(self) -> None:
        self.after_miss = 1


class Stale(Exception):
    """The child no longer read its stdin when the request was written: it broke while
    idle, and the request can go to its successor."""


class Child:
    """One running program and its three pipes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None, worker_id: int):
        parent = os.getpid()
        self.proc = POPEN(argv, stdin=-1, stdout=-1, stderr=-1, env=env, cwd=cwd, bufsize=0,
                          close_fds=True, process_group=0, preexec_fn=lambda: tie_to(parent))
        self.pid: int = self.proc.pid
        self.worker_id = worker_id
        self.pipes: list[IO[bytes]] = [self.proc.stdin, self.proc.stdout, self.proc.stderr]
        self.stdin, self.stdout, self.stderr = (pipe.fileno() for pipe in self.pipes)
        for fd in (self.stdin, self.stdout, self.stderr):
            os.set_blocking(fd, False)
        for fd in (self.stdin, self.stdout):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass            # over the kernel's limit: the default size works too
        self.started = time.monotonic()
        self.answered = 0
        self.early = b""        # stdout's bytes read but not yet judged (see _read_whole)
        self.status: int | None = None
        self.killed = False     # by the worker: its status says nothing of the program
        self.lines = Lines()
        self.budget = LineBudget()
        self.stderr_open = True
        self.poller = POLL()
        for fd in (self.stdout, self.stderr):
            self.poller.register(fd, POLLIN)
        self.idle_poller: Any = None    # see watch_idle
        self.awake_for, self.crowded_yield = AWAKE_FOR, CROWDED    # see _look_awake
        self.awake_waits = AwakeWaits()

    def exchange(self, message: bytes | memoryview, limit: int | None,
                 awake: bool = True) -> tuple[int, bytes | bytearray]:
        """Write one request, read its answer: (kind, body). ``awake``: the answer may be
        waited for awake (see ``_look_awake``). ProgramError (broken) when the child broke,
        reaped by then; Stale when it had broken before the request went."""
        try:
            answer = self._exchange(memoryview(message).cast("B"), limit, awake)
        except BadAnswer as exc:
            self.kill()
            self.reap()
            raise ProgramError(self.end("answered what is not an answer (%s)" % exc),
                               broken=True) from None
        except BrokenPipeError:
            self.finish()
            raise ProgramError(self.end("closed its standard input"), broken=True) from None
        except EOFError:
            self.finish()
            raise ProgramError(self.end("closed its standard output"), broken=True) from None
        self.answered += 1
        return answer

    def _exchange(self, view: memoryview, limit: int | None,
                  awake: bool) -> tuple[int, bytes | bytearray]:
        """Write the request at once (the pipe is empty between requests, so a request
        that fits it goes in one call), then wait on stdout (awake at first: see
        ``_look_awake``) and stderr, and on stdin only for the rest of a request larger
        than the pipe. A pipe nobody reads any more means the child broke while idle
        (``Stale``)."""
        pending = [memoryview(HEADER.pack(len(view))), view]
        try:
            self._write(pending)
        except BrokenPipeError:
            raise Stale from None
        reader: AnswerReader | None = None
        if awake and not pending:
            answer = self._look_awake(limit)
            if answer is not None:
                return answer
            if self.early:          # a part of the answer, or what is not one
                reader = AnswerReader(limit)
                if self._read_answer(reader, False):
                    return reader.kind, reader.body
        poller, stdin, stdout = self.poller, self.stdin, self.stdout
        if pending:
            poller.register(stdin, POLLOUT)
        try:
            while True:
                for fd, events in poller.poll():    # stdout and stderr come before stdin
                    if fd == stdout:
                        if reader is None:
                            if not pending:
                                answer = self._read_whole(limit)
                                if answer is not None:
                                    return answer
                            reader = AnswerReader(limit)
                        if self._read_answer(reader, bool(pending)):
                            return reader.kind, reader.body
                    elif fd == stdin:
                        if events & (POLLERR | POLLHUP):
                            raise BrokenPipeError
                        self._write(pending)
                        if not pending:
                            poller.unregister(stdin)
                    else:
                        self.drain_stderr()
        finally:
            if pending:
                poller.unregister(stdin)

    def _look_awake(self, limit: int | None) -> tuple[int, bytes] | None:
        """Wait for a quick answer without sleeping, while no one else wants this CPU: yield
        it and look, for at most ``awake_for`` seconds. A yield that took longer than
        ``crowded_yield`` ran something else (a busy machine): the wait ends there, and
        ``AwakeWaits`` decides when to try again. None when no whole answer came (a part
        of one is then in ``self.early``)."""
        waits = self.awake_waits
        if not waits.allowed():
            return None
        clock = time.perf_counter
        last = clock()
        deadline, crowded_yield = last + self.awake_for, self.crowded_yield
        while True:
            YIELD()
            now = clock()
            if now - last > crowded_yield or now > deadline:
                waits.missed()
                return None
            last = now
            answer = self._read_whole(limit)
            if answer is not None or self.early:
                waits.caught()
                return answer

    def _read_whole(self, limit: int | None) -> tuple[int, bytes] | None:
        """The common case in one read: a whole answer that fits ``READ_SIZE``, with nothing
        after it. None if the read was anything else: its bytes are then waiting in
        ``self.early`` for the reader, which judges them."""
        try:
            data = os.read(self.stdout, READ_SIZE)
        except BlockingIOError:
            return None
        if not data:
            raise EOFError
        if len(data) >= ANSWER.size:
            kind, length = ANSWER.unpack_from(data)
            if (len(data) == ANSWER.size + length and kind in (REPLY, FAILURE)
                    and (limit is None or length <= limit)):
                return kind, data[ANSWER.size:]
        self.early = data
        return None

    def _write(self, pending: list[memoryview]) -> None:
        try:
            sent = os.writev(self.stdin, pending)
        except BlockingIOError:
            return
        while pending and sent >= len(pending[0]):
            sent -= len(pending.pop(0))
        if sent:
            pending[0] = pending[0][sent:]

    def _read_answer(self, reader: AnswerReader, writing: bool) -> bool:
        """Read what stdout has; True once the answer is whole."""
        if self.early:                  # what _read_whole took and left to the reader
            data, self.early = self.early, b""
            used = reader.feed(data)
            if used < len(data):
                raise BadAnswer("%d bytes after an answer" % (len(data) - used))
            return reader.done
        target = reader.into()
        try:
            if target is not None:
                with target:        # released before the buffer grows again
                    count = os.readv(self.stdout, [target])
                reader.filled(count)
            else:
                data = os.read(self.stdout, READ_SIZE)
                count = len(data)
                used = reader.feed(data)
                if used < count:
                    raise BadAnswer("%d bytes after an answer" % (count - used))
        except BlockingIOError:
            return False
        if not count:
            raise EOFError
        if reader.done and writing:
            raise BadAnswer("an answer before the whole request was read")
        return reader.done

    def drain_stderr(self, gone: bool = False) -> bool:
        """Log what the child wrote on stderr, a read's worth (64 KiB) at a time; False once
        it is all read. ``gone``: the child has exited, so nothing more will come (a
        grandchild that holds the pipe open is not waited for)."""
        try:
            data = os.read(self.stderr, READ_SIZE)
        except BlockingIOError:
            if not gone:
                return True
            data = b""
        except OSError:
            data = b""
        for line in self.lines.feed(data) if data else self.lines.rest():
            self._log(line)
        if data:
            return True
        self.stderr_open = False
        self.poller.unregister(self.stderr)
        if self.idle_poller is not None:
            self.idle_poller.unregister(self.stderr)
        return False

    def _log(self, line: bytes) -> None:
        ok, skipped = self.budget.take()
        if skipped:
            log.warning("worker %d: %d more lines of its program's stderr were not logged",
                        self.worker_id, skipped)
        elif not ok and self.budget.skipped == 1:
            log.warning("worker %d: its program writes more than %d lines a second on stderr: "
                        "the rest of this second's are counted, not logged", self.worker_id,
                        LINES_PER_SECOND)
        if ok:
            log.info("worker %d stderr: %s", self.worker_id,
                     line.decode("utf-8", "backslashreplace"))

    def watch_idle(self, socket_fd: int) -> None:
        """What the worker waits on for requests (``Command.idle``): its ZeroMQ socket's
        descriptor, stdout (anything there is stray output or end of file: a broken child)
        and stderr while it is open. One poll object for the child's life: the wait is one
        system call."""
        self.idle_poller = POLL()
        self.idle_poller.register(socket_fd, POLLIN)
        for fd in (self.stdout, self.stderr) if self.stderr_open else (self.stdout,):
            self.idle_poller.register(fd, POLLIN)

    def alive(self) -> bool:
        if self.status is None:
            pid, status = WAITPID(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status is None

    def kill(self) -> None:
        if self.alive():
            self.killed = True
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> int:
        """Wait for the child's exit (killed, or on its way out), log the rest of its
        stderr and close its pipes; its wait status."""
        if self.status is None:
            self.status = WAITPID(self.pid, 0)[1]
        while self.stderr_open and self.drain_stderr(gone=True):
            pass                    # what it wrote before it went
        for pipe in self.pipes:
            try:
                pipe.close()
            except OSError:
                pass
        self.proc.returncode = self.status     # reaped here: Popen must not wait for it
        return self.status

    def end(self, what: str) -> str:
        """How the (reaped) child ended: its own exit, or ``what`` it did before the worker
        killed it."""
        assert self.status is not None
        if self.killed:
            return "its program %s: killed it" % what
        return "its program " + describe_exit(self.status)

    def finish(self, grace: float = EXIT_GRACE) -> int:
        """The child stopped talking: give it ``grace`` seconds to exit by itself (its own
        status says more than a SIGKILL's), then kill it; its wait status."""
        self.wait(grace)
        self.kill()
        return self.reap()

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for the child to exit; whether it did."""
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:
            fd = -1
        try:
            deadline = time.monotonic() + seconds
            while self.alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if fd >= 0:
                    waiter = POLL()
                    waiter.register(fd, POLLIN)
                    waiter.poll(left * 1000)
                else:
                    SLEEP(min(left, 0.01))
            return True
        finally:
            if fd >= 0:
                os.close(fd)

    def stop(self) -> None:
        """The worker is leaving: end of file on stdin, a moment to leave, then SIGKILL."""
        try:
            self.pipes[0].close()
        except OSError:
            pass
        self.finish(STOP_GRACE)


# -- the consumer ------------------------------------------------------------------------------

class Command(Consumer):
    """Serve every request through a program: ``Command(["resize", "--fast"])``.

    ``argv`` is the program and its arguments (a string is split as a shell would split it,
    without running one); ``$WID`` in an argument becomes the worker's id, which the child
    also finds in ``GASPAR2_WORKER_ID``. ``env`` replaces the worker's environment when
    given; ``cwd`` is the child's working directory. Each worker process starts one child
    in ``setup()`` and talks to it as the module's docstring says."""

    accepts_memoryview = True       # a body in shared memory is written from there

    def __init__(self, argv: Sequence[str] | str, env: Mapping[str, str] | None = None,
                 cwd: str | None = None):
        super().__init__()
        words = split(argv) if isinstance(argv, str) else [str(arg) for arg in argv]
        if not words:
            raise ValueError("Command needs a program to run")
        self.argv = words
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.worker_id = 0
        self.reply_limit: Callable[[], int | None] = lambda: None
        self.child: Child | None = None
        self.backoff = Backoff()
        self.due = 0.0              # no new child before this (time.monotonic())
        # The worker had to wait for the request it runs: a quiet machine, where the answer
        # is waited for awake (Child._look_awake); with requests queued it sleeps at once.
        self.waited = False

    def __str__(self) -> str:
        return shlex.join(self.argv)

    def __repr__(self) -> str:
        return "Command(%r)" % (self.argv,)

    def problem(self) -> str | None:
        """Why the program cannot be started, or None (checked before anything forks)."""
        return problem(self.argv[0], self.env, self.cwd)

    def attach(self, worker_id: int, reply_limit: Callable[[], int | None]) -> None:
        """Called by the worker before ``setup``: who it is, and its reply limit now."""
        self.worker_id = worker_id
        self.reply_limit = reply_limit

    def setup(self) -> None:
        """Start the child; an OSError (not found, not executable) fails the worker's start,
        as a Python handler's setup() that raises does."""
        unpatch_subprocess()
        self.child = self._spawn()

    def _spawn(self) -> Child:
        env = dict(os.environ if self.env is None else self.env)
        env[WORKER_ID] = str(self.worker_id)
        child = Child(substitute(self.argv, self.worker_id), env, self.cwd, self.worker_id)
        log.debug("worker %d: started %s (pid %d)", self.worker_id, self, child.pid)
        return child

    def handle(self, message: bytes) -> bytes | bytearray:
        for _ in range(2):
            child = self.child
            if child is None:
                child = self._start_now()
            awake, self.waited = self.waited, False
            try:
                kind, body = child.exchange(message, self.reply_limit(), awake)
            except Stale:
                self._broke_idle(child)
                continue
            if kind == REPLY:
                return body
            raise ProgramError(body.decode("utf-8", "replace"))
        raise ProgramError("its program broke before it was sent the request, twice",
                           broken=True)

    def _start_now(self) -> Child:
        """A child for a request when the last one broke while idle: after its back-off
        (the producer takes back what this worker holds meanwhile), a fresh one."""
        if not self.recover(lambda: False) or self.child is None:
            raise ProgramError("its program cannot be started again", broken=True)
        return self.child

    def recover(self, leaving: Callable[[], bool], why: str = "") -> bool:
        """After a request failed on a broken child: start another once the back-off allows
        (unless ``leaving`` says the worker is going). False, logged, when the program cannot
        be started any more: the worker then exits, and the supervisor's back-off takes
        over."""
        child = self.child
        if child is not None and child.status is not None:
            self._broke(child, why)
        while not leaving():
            left = self.due - time.monotonic()
            if left <= 0:
                break
            SLEEP(min(left, 0.05))
        if leaving() or self.child is not None:
            return True
        try:
            self.child = self._spawn()
        except OSError as exc:
            log.error("worker %d: cannot start %s again: %s", self.worker_id, self, exc)
            return False
        return True

    def _broke(self, child: Child, how: str = "") -> None:
        """Note a child's end, and when the next may start: at once, or after the workers'
        back-off when it broke young, having answered nothing."""
        self.child = None
        young = child.answered == 0 and time.monotonic() - child.started < YOUNG
        if young:
            delay = self.backoff.failed()
        else:
            self.backoff.succeeded()
            delay = 0.0
        self.due = time.monotonic() + delay
        how = (" (%s)" % how) if how else ""
        if delay:
            log.warning("worker %d: its program (pid %d) broke%s before answering anything: "
                        "the next starts in %.1f s", self.worker_id, child.pid, how, delay)
        else:
            log.warning("worker %d: its program (pid %d) broke%s: starting another",
                        self.worker_id, child.pid, how)

    def idle(self, socket: zmq.SyncSocket, timeout_ms: int) -> zmq.Frame | None:
        """The worker's wait for requests: the first frame on ``socket``, or None when
        ``timeout_ms`` passes first; the child's stderr is logged meanwhile, and a child
        that broke while idle replaced. ProgramError when the program cannot be started
        again. A frame already there is taken without a wait: under load the child's pipes
        are watched while it runs a request (``Child.exchange``)."""
        try:
            return RECV(socket, zmq.NOBLOCK, False)
        except zmq.Again:
            pass
        child = self.child
        if child is None:
            self._idle_without_child(socket, timeout_ms)
        else:
            if child.idle_poller is None:
                child.watch_idle(int(socket.FD))
            self.waited = True
            for fd, _ in child.idle_poller.poll(timeout_ms):
                if fd == child.stdout:
                    self._broke_idle(child)
                    break
                if fd == child.stderr:
                    child.drain_stderr()
                    if not child.stderr_open and not child.alive():
                        self._broke_idle(child)
                        break
        # The socket's descriptor only says that ZeroMQ has news, maybe not a message.
        try:
            return RECV(socket, zmq.NOBLOCK, False)
        except zmq.Again:
            return None

    def _idle_without_child(self, socket: zmq.SyncSocket, timeout_ms: int) -> None:
        """The wait while a broken child's successor waits out its back-off."""
        timeout_ms = max(0, min(timeout_ms, int((self.due - time.monotonic()) * 1000) + 1))
        poller = zmq.Poller()
        poller.register(socket, IDLE_FLAGS)
        poller.poll(timeout_ms)
        if time.monotonic() >= self.due and not self.recover(lambda: False):
            raise ProgramError("its program cannot be started again", broken=True)

    def _broke_idle(self, child: Child) -> None:
        """Output while no request was sent, or end of file: the child is of no more use."""
        try:
            stray = os.read(child.stdout, 64)
        except OSError:
            stray = b""
        if stray:
            child.kill()
            child.reap()
            how = child.end("wrote %r with no request" % stray)
        else:
            child.finish()
            how = child.end("closed its standard output")
        self._broke(child, how + ", while idle")

    def close(self) -> None:
        """The worker is leaving: its child too."""
        if self.child is not None:
            self.child.stop()
            self.child = None
