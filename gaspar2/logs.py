"""Where the log goes and in what shape: text or JSON lines, standard error or a file, and the
access log on its own when asked.

Log files are reopened on SIGUSR1, as gunicorn's are, so logrotate can move them away. Worker
processes inherit the handlers through fork and reopen a file by themselves once its path
names another file, so their lines follow the rotation too.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import Any

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
ACCESS_FIELDS = ("client", "outcome", "bytes_in", "bytes_out", "ms", "worker")
ACCESS_LOGGER = "gaspar2.access"


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, the access fields when
    the record has them, and ``traceback``: the exception's, or what follows the first line
    of a message of several lines (a handler's traceback sent by a worker)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        first, _, rest = message.partition("\n")
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
                    .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": first,
            "pid": record.process,
        }
        for field in ACCESS_FIELDS:
            if field in record.__dict__:
                entry[field] = record.__dict__[field]
        details = [rest.rstrip("\n")] if rest else []
        if record.exc_info:
            details.append(self.formatException(record.exc_info))
        if record.stack_info:
            details.append(self.formatStack(record.stack_info))
        if details:
            entry["traceback"] = "\n".join(details)
        return json.dumps(entry, default=str)


class ReopenableFileHandler(logging.FileHandler):
    """Appends to a file; ``reopen()`` (SIGUSR1) opens the path anew. In a process forked
    from the one that opened it (a worker), the path is checked before each record and the
    file reopened once the path names another file."""

    def __init__(self, path: str):
        super().__init__(os.path.abspath(path), mode="a", encoding="utf-8", delay=False)
        self.owner = os.getpid()
        self.identity = self._identity_of_stream()

    def _identity_of_stream(self) -> tuple[int, int] | None:
        if self.stream is None:
            return None
        try:
            st = os.fstat(self.stream.fileno())
        except (OSError, AttributeError, ValueError):
            return None
        return st.st_dev, st.st_ino

    def reopen(self) -> None:
        with self.lock:   # type: ignore[union-attr]
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            self.identity = self._identity_of_stream()

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.owner:
            try:
                st = os.stat(self.baseFilename)
                moved = (st.st_dev, st.st_ino) != self.identity
            except OSError:
                moved = True
            if moved:
                self.reopen()
        super().emit(record)


def handler_for(path: str | None, default_stream: Any) -> logging.Handler:
    if path is None or path == "-":
        return logging.StreamHandler(default_stream)
    return ReopenableFileHandler(path)


def formatter_for(shape: str) -> logging.Formatter:
    return JSONFormatter() if shape == "json" else logging.Formatter(TEXT_FORMAT)


def counted(number: int, noun: str) -> str:
    """``1 worker``, ``2 workers``: log lines that read as written."""
    return "%d %s%s" % (number, noun, "" if number == 1 else "s")


def escaped(data: bytes | bytearray | memoryview, limit: int = 64) -> str:
    """What a peer sent, fit for one log line: escaped as ``repr`` escapes bytes (so no
    newline, terminal control sequence or invalid UTF-8 reaches the log as such), at most
    ``limit`` bytes of it, followed by how long it was when that is more."""
    text = repr(bytes(data[:limit]))
    if len(data) > limit:
        text += "... (%d bytes)" % len(data)
    return text


def configure(level: str = "info", shape: str = "text", error_logfile: str | None = None,
              access_logfile: str | None = None) -> None:
    """Set up the root logger (the error log) and, when ``access_logfile`` is given, the
    access log on its own handler ('-': standard output). Raises OSError when a file cannot
    be opened."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    errors = handler_for(error_logfile, sys.stderr)
    errors.setFormatter(formatter_for(shape))
    root.addHandler(errors)
    root.setLevel(level.upper())
    logging.captureWarnings(True)       # warnings too, in the same shape
    access = logging.getLogger(ACCESS_LOGGER)
    for handler in list(access.handlers):
        access.removeHandler(handler)
    access.propagate = access_logfile is None
    if access_logfile is not None:
        handler = handler_for(access_logfile, sys.stdout)
        handler.setFormatter(formatter_for(shape))
        access.addHandler(handler)


def reopen() -> int:
    """Reopen every log file (SIGUSR1); returns how many."""
    count = 0
    for logger in (logging.getLogger(), logging.getLogger(ACCESS_LOGGER)):
        for handler in logger.handlers:
            if isinstance(handler, ReopenableFileHandler):
                handler.reopen()
                count += 1
    return count


def flush() -> None:
    """Flush every handler: before a forked process leaves with os._exit."""
    for logger in (logging.getLogger(), logging.getLogger(ACCESS_LOGGER)):
        for handler in logger.handlers:
            handler.flush()
