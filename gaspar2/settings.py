"""Every option, once: its name, default, type, help and command-line flag.

``Producer`` keyword arguments, ``gaspar2 serve`` flags and the defaults both use come from
the one table below; nothing else writes a default down.
"""

from __future__ import annotations

import argparse
import re
import shlex
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .protocol.wire import DEFAULT_MAX_MESSAGE_SIZE

MiB = 2**20
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 10**3, "kib": 2**10, "m": MiB, "mb": 10**6,
         "mib": MiB, "g": 2**30, "gb": 10**9, "gib": 2**30}


def size(text: str | int) -> int:
    """Bytes, from ``1048576``, ``1MiB``, ``64m`` or ``2GB``."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError("expected a size such as 1048576, 64MiB or 2GB, got %r" % (text,))
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def flag(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("expected true or false, got %r" % (text,))
    return value in ("1", "true", "yes", "on")


def choice(*names: str) -> Callable[[Any], str]:
    def convert(text: Any) -> str:
        if str(text).lower() not in names:
            raise ValueError("expected one of %s, got %r" % (", ".join(names), text))
        return str(text).lower()
    convert.__name__ = "one of " + ", ".join(names)
    return convert


LEVELS = ("debug", "info", "warning", "error", "critical")
level = choice(*LEVELS)
log_format = choice("text", "json")


def mode(text: str | int) -> int:
    """File permission bits, from ``660``, ``0660``, ``0o660`` or an int."""
    if isinstance(text, int):
        return text
    value = str(text).strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", value):
        raise ValueError("expected an octal mode such as 660, got %r" % (text,))
    return int(value, 8)


def addresses(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """One address or several (a config file may give a list)."""
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("expected an address such as 127.0.0.1:10123, got %r" % (item,))
    return [item.strip() for item in items]


def command_line(value: str | list[str] | tuple[str, ...]) -> str:
    """A program and its arguments, as one line a shell would split (a config file may
    give a list of words)."""
    line = value if isinstance(value, str) else shlex.join(str(word) for word in value)
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError("cannot split %r: %s" % (line, exc)) from None
    if not words:
        raise ValueError("expected a program and its arguments, got %r" % (value,))
    return line


def seconds(text: str | float) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("expected seconds >= 0, got %r" % (text,))
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    convert: Callable[[Any], Any]
    help: str
    flags: tuple[str, ...] = ()     # none: a Producer keyword argument only
    metavar: str | None = None
    producer: bool = True           # False: for the command line's own process only
    in_file: bool = True            # False: the command line only, never a config file


S = Setting
SETTINGS: tuple[Setting, ...] = (
    S("bind", None, addresses,
      "listen on ADDRESS: HOST:PORT, [V6]:PORT, unix:PATH or fd://N; repeat it to listen on "
      "several (default 127.0.0.1:10123)", ("-b", "--bind"), "ADDRESS"),
    S("host", "127.0.0.1", str, "the same as --bind HOST:PORT, together with --port",
      ("--host",), "HOST"),
    S("port", 10123, int, "the same as --bind HOST:PORT, together with --host; 0 picks a free "
      "port", ("--port",), "PORT"),
    S("unix_socket_mode", 0o660, mode, "the permissions of a unix:PATH socket file (octal)",
      ("--unix-socket-mode",), "MODE"),
    S("exec", None, command_line,
      "serve a program instead of MODULE:ATTR: each worker runs one PROGRAM with its ARGs "
      "(split as a shell splits them, run without one; $WID is the worker's id) and hands it "
      "each request on its standard input (see the README, 'Workers in any language')",
      ("--exec",), "'PROGRAM ARG...'", producer=False),
    S("workers", None, int, "worker processes (default: one per CPU)", ("-w", "--workers"), "N"),
    S("max_message_size", DEFAULT_MAX_MESSAGE_SIZE, size,
      "a request whose length prefix says more is refused (reset) unread",
      ("--max-message-size",), "BYTES"),
    S("timeout", None, seconds,
      "the CLIENT's deadline: a request not answered S seconds after it was read fails "
      "(reset). A worker that has run one request for S seconds is replaced too, unless "
      "--worker-timeout says otherwise", ("--timeout",), "S"),
    S("worker_timeout", None, seconds,
      "the HANDLER's deadline: kill and replace a worker that has run one request for S "
      "seconds; that request fails (default: --timeout, else never)",
      ("--worker-timeout",), "S"),
    S("warn_after", 30.0, seconds,
      "log a request that has run S seconds, once, with its worker and the worker's Python "
      "stack; /healthz fails while every worker is past S and requests wait; 0: never",
      ("--warn-after",), "S"),
    S("read_timeout", 10.0, seconds,
      "drop a client that has not sent its whole frame within S seconds",
      ("--read-timeout",), "S"),
    S("write_timeout", 30.0, seconds, "reset a client that has not taken its whole reply within "
      "S seconds", ("--write-timeout",), "S"),
    S("max_reply_size", None, size, "a larger reply fails its request (default: "
      "max-message-size)", ("--max-reply-size",), "BYTES"),
    S("buffer_limit", None, size, "bytes held for requests and replies at most; past it, "
      "request bodies wait (default: a quarter of memory)", ("--buffer-limit",), "BYTES"),
    S("shm_threshold", 64 * 1024, size, "request bodies this large or larger, and their "
      "replies, travel between the producer and local workers in shared memory; 0: never",
      ("--shm-threshold",), "BYTES"),
    S("shm_size", 1 << 30, size, "the shared memory for them, at most (used as needed; "
      "past it, bodies travel through ZeroMQ)", ("--shm-size",), "BYTES"),
    S("graceful_timeout", 30.0, seconds,
      "on stop, how long to finish the requests already received", ("--graceful-timeout",), "S"),
    S("max_connections", 10000, int,
      "past N open connections, leave the rest in the kernel's listen queue",
      ("--max-connections",), "N"),
    S("backlog", 2048, int, "the listen queue's length", ("--backlog",), "N"),
    S("max_requests", None, int, "replace a worker after N requests (default: never)",
      ("--max-requests",), "N"),
    S("max_requests_jitter", 0, int,
      "add 0..N to each worker's max-requests, so they do not all restart at once",
      ("--max-requests-jitter",), "N"),
    S("metrics", None, str, "serve Prometheus metrics at /metrics and health at /healthz "
      "there (needs the 'metrics' extra)", ("--metrics",), "HOST:PORT"),
    S("metrics_read_timeout", 5.0, seconds, "drop a metrics or health client whose request "
      "header is not whole S seconds after it connected, however it trickles in",
      ("--metrics-read-timeout",), "S"),
    S("access_log", False, flag, "the same as --access-logfile -", ("--access-log",)),
    S("remote_workers", None, str, "let workers on other machines join at this endpoint",
      ("--remote-workers",), "tcp://HOST:PORT"),
    S("curve_secret_key", None, str, "this producer's .key_secret (from 'gaspar2 keys')",
      ("--curve-secret-key",), "FILE"),
    S("curve_authorized", None, str, "the public .key files of the workers allowed to join",
      ("--curve-authorized",), "DIR|FILE"),
    S("insecure_remote_workers", False, flag,
      "allow remote workers without CURVE on a non-loopback address",
      ("--insecure-remote-workers",)),
    S("max_remote_workers", 256, int, "remote workers that may join at most",
      ("--max-remote-workers",), "N"),
    S("heartbeat", 1.0, float,
      "remote worker heartbeat; 3 missed ones mean it is gone", ("--heartbeat",), "S"),
    S("window", 8, int, "requests a worker may hold while it runs quick ones",
      ("--window",), "N"),
    S("giveback_after", 0.005, seconds,
      "a worker's request that runs longer than S seconds (or 4x its usual time) is slow: "
      "what the worker holds behind it goes to others", ("--giveback-after",), "S"),
    S("name", None, str, "the name in process titles and logs (default: the handler's)",
      ("--name",), "NAME"),
    S("log_level", "info", level, "the lowest level logged", ("--log-level",), "LEVEL",
      producer=False),
    S("log_format", "text", log_format,
      "text, or json: one JSON object per line (a traceback is one field)",
      ("--log-format",), "FORMAT", producer=False),
    S("error_logfile", None, str, "write the log there ('-', the default: standard error); "
      "SIGUSR1 reopens it", ("--error-logfile",), "PATH", producer=False),
    S("access_logfile", None, str, "log one line per request there ('-': standard output); "
      "SIGUSR1 reopens it", ("--access-logfile",), "PATH", producer=False),
    S("config", None, str, "read settings from this Python file (default: ./gaspar2.conf.py "
      "when present)", ("-c", "--config"), "FILE", producer=False, in_file=False),
    S("print_config", False, flag, "print the resolved settings, as a config file, and exit",
      ("--print-config",), producer=False, in_file=False),
)
BY_NAME = {s.name: s for s in SETTINGS}
DEFAULTS = {s.name: s.default for s in SETTINGS}


class Settings(types.SimpleNamespace):
    """Resolved settings: every name of the table as an attribute."""


def resolve(given: dict[str, Any]) -> Settings:
    """The defaults overlaid with ``given`` (None keeps a default); unknown names raise
    TypeError, as an unknown keyword argument does.

    ``bind`` comes out as the final list of addresses: the ones given, plus HOST:PORT when
    ``host`` or ``port`` was given or no address was. ``worker_timeout`` defaults to
    ``timeout``: a worker that has run one request longer than that can no longer answer
    anyone, since its request has timed out.
    """
    unknown = sorted(set(given) - set(BY_NAME))
    if unknown:
        raise TypeError("unknown option%s: %s" % ("s" * (len(unknown) > 1), ", ".join(unknown)))
    values = dict(DEFAULTS)
    for name, value in given.items():
        if value is not None:
            values[name] = BY_NAME[name].convert(value)
    binds = list(values["bind"] or [])
    if given.get("host") is not None or given.get("port") is not None or not binds:
        binds.append(host_port(values["host"], values["port"]))
    values["bind"] = binds
    if values["worker_timeout"] is None:
        values["worker_timeout"] = values["timeout"]
    return Settings(**values)


def host_port(host: str, port: int) -> str:
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def show(setting: Setting, value: Any) -> str:
    """A value as Python source, for help texts and --print-config."""
    if setting.convert is mode and isinstance(value, int):
        return "0o%o" % value
    return repr(value)


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per setting that has one (or per setting in ``names``). Flags not given
    are absent from the parsed namespace, so what the user said can be told from defaults."""
    for setting in SETTINGS:
        if not setting.flags or (names is not None and setting.name not in names):
            continue
        default = setting.default
        text = setting.help
        if default not in (None, False):
            text += " (default %s)" % show(setting, default).strip("'")
        if setting.convert is flag:
            parser.add_argument(*setting.flags, dest=setting.name, action="store_true",
                                default=argparse.SUPPRESS, help=text)
        elif setting.convert is addresses:
            parser.add_argument(*setting.flags, dest=setting.name, action="append",
                                metavar=setting.metavar, default=argparse.SUPPRESS, help=text)
        else:
            parser.add_argument(*setting.flags, dest=setting.name, type=setting.convert,
                                metavar=setting.metavar, default=argparse.SUPPRESS, help=text)


def producer_options(values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that ``Producer`` takes."""
    return {k: v for k, v in values.items() if k in BY_NAME and BY_NAME[k].producer}
