"""Process utilities every role shares: titles, the parent-death signal, fork hygiene, the
private ipc directory, the open-file limit and the back-off between respawns."""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import shutil
import signal
import stat
import tempfile
from typing import Any

from gevent._hub_local import get_hub_if_exists
from gevent.monkey import get_original

log = logging.getLogger("gaspar2")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def set_title(title: str) -> None:
    """Name this process for ps and top, when setproctitle is installed."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass        # not Linux: workers still notice through getppid()
    if os.getppid() != parent_pid:
        os._exit(1)


def become_subreaper() -> None:
    """Ask Linux to make this process the parent of its descendants' orphans, so it can
    reap them (PID 1 may not)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# glibc's mallopt parameters, and the values workers run with. By default glibc serves a
# block over 128 KiB with a fresh mmap and gives freed heap back past 128 KiB, both limits
# moving as the process runs: a worker whose handler allocates a few MiB per request (a
# decoded image) can end up mapping and faulting in every page of it on every request.
# Fixed limits keep such blocks in the heap, at the cost of holding up to TRIM_THRESHOLD of
# freed memory per process.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 64 * 2**20


def pin_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds in this process and the children it forks,
    unless the environment sets them (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``
    win). False where there is no glibc."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def close_inherited_sockets(keep: set[int]) -> None:
    """Close every socket fd but ``keep``: client connections, listeners, ZeroMQ's own."""
    try:
        fds: list[int] | range = [int(name) for name in os.listdir("/proc/self/fd")]
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


def original(module: str, name: str) -> Any:
    """``module.name`` as the standard library has it, even in a process that gevent's
    monkey patching changed: a child of the fork server runs no hub for patched code."""
    return get_original(module, name)


def drop_inherited_hub() -> None:
    """In a child forked from a process that runs a gevent hub (embedded, patched or
    not): destroy that hub and its loop. Its watchers watch the parent's fds, which the
    child closes; gevent, if the child uses it, starts afresh."""
    hub = get_hub_if_exists()
    if hub is not None:
        hub.destroy(destroy_loop=True)


def refresh_inherited_hub() -> None:
    """In a worker forked from a preloader whose import of the app started a gevent hub:
    reinitialise that hub's loop for this process, as gevent's own fork would."""
    if get_hub_if_exists() is not None:
        import gevent
        gevent.reinit()


def ignore_signals(*signals: signal.Signals) -> None:
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)


IPC_PREFIX = "gaspar2-"
LOCK = "lock"


def make_ipc_dir() -> tuple[str, int]:
    """A private directory for the ipc sockets, and the fd of the lock (``flock``) held on
    it for as long as this process, its fork server or one of its workers lives.

    The directory is made and locked under a hidden name, then renamed, so no other
    producer ever sees it unlocked. A directory whose lock anyone can take is stale (its
    producer was killed) and is removed; a pid in a name proves nothing, since producers in
    other PID namespaces may share this /tmp."""
    base = tempfile.gettempdir()
    remove_stale_ipc_dirs(base)
    hidden = tempfile.mkdtemp(prefix="." + IPC_PREFIX)
    fd = os.open(os.path.join(hidden, LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(base, "%s%d-%s" % (IPC_PREFIX, os.getpid(), hidden.rsplit("-", 1)[1]))
    os.rename(hidden, path)
    return path, fd


def remove_stale_ipc_dirs(base: str) -> None:
    for name in os.listdir(base):
        if not name.startswith(IPC_PREFIX):
            continue
        path = os.path.join(base, name)
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR)
        except OSError:
            continue            # not ours to judge: no lock file, or not ours to open
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue            # locked: its producer lives
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft open-file limit as far as the hard one allows; log what we serve with."""
    import resource
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
    return soft


class Backoff:
    """The delay before the next start of something that keeps failing: it doubles with
    each failure in a row, up to ``cap``, and a success starts it over."""

    def __init__(self, first: float = 0.1, cap: float = 10.0):
        self.first, self.cap = first, cap
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; the delay to wait before the next try."""
        self.failures += 1
        return self.delay()

    def succeeded(self) -> None:
        self.failures = 0

    def delay(self) -> float:
        if not self.failures:
            return 0.0
        factor: int = 2 ** (self.failures - 1)     # typeshed: int ** int may be a float
        return min(self.first * factor, self.cap)
