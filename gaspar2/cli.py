"""The ``gaspar2`` command: serve a handler, run remote workers, or send one request."""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

from . import __version__, client, config, logs, settings
from .consumer import Consumer, as_consumer, reply_bytes
from .frontend import listeners
from .loading import EXIT_BOOT, EXIT_LOAD, EXIT_USAGE, find_module, probe, resolve
from .producer.lifecycle import Producer, WorkerBootError
from .protocol.curve import KeyFileError, generate_keys
from .workers.command import Command
from .workers.group import serve_group

log = logging.getLogger("gaspar2")

SERVE_EPILOG = """\
settings come from the command line, then GASPAR2_CMD_ARGS (more arguments, as on the
command line), then the config file (-c, or ./gaspar2.conf.py when present), then the
defaults; --print-config shows the result.

timeouts: --timeout is the client's deadline: past it the request fails, and a worker still
running that one request is replaced, since its answer can no longer reach anyone.
--worker-timeout is the handler's deadline (by default the same): the worker running one
request that long is killed and replaced. --read-timeout is the client's time to send its
request; --graceful-timeout is the time a stop gives to the requests under way.

exit status: 0 stopped by a signal, 1 cannot serve (address in use...), 2 usage (command
line, GASPAR2_CMD_ARGS, config file), 3 a worker cannot start (the app's import or setup()
raised), 4 the app cannot be found (no such module or attribute, or --exec's program).
"""


DESCRIPTION = "Serve a handler on every core, run workers for a producer on another machine, " \
              "or send one request."
TARGET_HELP = "a handler function, a Consumer subclass or a Consumer instance, as module:name"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaspar2", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version="gaspar2 " + __version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do; gaspar2 COMMAND --help tells more")

    serve = commands.add_parser("serve", help="serve a handler on every core", epilog=SERVE_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("target", metavar="MODULE:ATTR", nargs="?", help=TARGET_HELP)
    serve.set_defaults(parser=serve)
    settings.add_arguments(serve)

    worker = commands.add_parser("worker", help="run workers for a producer on another machine")
    worker.add_argument("target", metavar="MODULE:ATTR", nargs="?", help=TARGET_HELP)
    worker.set_defaults(parser=worker)
    worker.add_argument("--connect", required=True, metavar="tcp://HOST:PORT",
                        help="the producer's --remote-workers endpoint")
    worker.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="worker processes (default: one per CPU)")
    worker.add_argument("--listen", default="0.0.0.0", metavar="HOST",
                        help="the address the workers listen on for requests")
    worker.add_argument("--advertise", default=None, metavar="HOST",
                        help="the address the producer reaches them at (default: the route to it)")
    worker.add_argument("--curve-secret-key", default=None, metavar="FILE",
                        help="these workers' .key_secret")
    worker.add_argument("--curve-server-key", default=None, metavar="FILE",
                        help="the producer's public .key")
    settings.add_arguments(worker, ("exec", "heartbeat", "log_level", "log_format", "error_logfile",
                                    "max_message_size"))

    keys = commands.add_parser("keys", help="generate a CURVE key pair")
    keys.set_defaults(parser=keys)
    keys.add_argument("directory", help="where the two files are written")
    keys.add_argument("name", help="writes NAME.key (public) and NAME.key_secret")

    check = commands.add_parser(
        "check", help="find a handler as serve would, run its setup(), optionally one request",
        epilog="exit status: as serve's (2 usage, 3 setup() raised, 4 the app cannot be "
               "found or cannot take a request), and 1 when --request fails.")
    check.set_defaults(parser=check)
    check.add_argument("target", metavar="MODULE:ATTR", help=TARGET_HELP)
    check.add_argument("--request", metavar="DATA", default=None,
                       help="run one request with DATA as its body; print the reply")

    req = commands.add_parser(
        "request", help="send one request and print the reply",
        epilog="exit status: 0 the reply was printed, 1 the request failed (reset, refused, "
               "timed out), 2 usage; a standard output closed early ends it quietly with 141, "
               "as the shell reports a program stopped by SIGPIPE.")
    req.set_defaults(parser=req)
    req.add_argument("url", metavar="ADDRESS", help="HOST:PORT, [V6]:PORT, unix:PATH or unix:@NAME")
    req.add_argument("message", nargs="?", default="-",
                     help="the request's body; '-' (the default): standard input")
    req.add_argument("--file", "-f", default=None, metavar="FILE",
                     help="send FILE as the body; like standard input it is streamed, not read "
                          "into memory first")
    req.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="give up when the whole exchange takes longer than S seconds; "
                          "0 (the default when absent): no limit")
    return parser


def usage_error(command: str, message: Any) -> int:
    print("gaspar2 %s: error: %s" % (command, message), file=sys.stderr)
    return EXIT_USAGE


def start_logging(values: Any) -> None:
    """Log as the settings say; OSError when a log file cannot be opened."""
    access = values.access_logfile
    if values.access_log and access is None:
        access = "-"
    logs.configure(values.log_level, values.log_format, values.error_logfile, access)


def prepare(command: str, values: Any, target: str) -> int:
    """Start logging and find the app; an exit code, 0 when both went well."""
    try:
        start_logging(values)
        return probe(target) if command == "serve" else find_module(target)
    except OSError as exc:
        return usage_error(command, "cannot open a log file: %s" % exc)
    except ValueError as exc:
        return usage_error(command, exc)


def what_to_serve(command: str, values: Any, target: str | None) -> str | Command | int:
    """Start logging, then find MODULE:ATTR, or the program of ``--exec`` (a Command); an
    exit code when neither or both are given, or what they name cannot be found."""
    if (target is None) == (values.exec is None):
        return usage_error(command, "give MODULE:ATTR or --exec, not both" if target is not None
                           else "MODULE:ATTR is required (or --exec 'PROGRAM ARG...')")
    if target is not None:
        return prepare(command, values, target) or target
    try:
        start_logging(values)
    except OSError as exc:
        return usage_error(command, "cannot open a log file: %s" % exc)
    program = Command(values.exec)
    wrong = program.problem()
    if wrong:
        log.error("cannot start %s: %s", program, wrong)
        return EXIT_LOAD
    return program


def gather(args: argparse.Namespace) -> tuple[dict[str, Any], settings.Settings, str | None]:
    """Every source merged by precedence, resolved, and the config file read (if any)."""
    given = {k: v for k, v in vars(args).items() if k in settings.BY_NAME}
    merged, path = config.gather(given)
    values = settings.resolve(merged)
    listeners.validate(values.bind)
    return merged, values, path


def serve(args: argparse.Namespace) -> int:
    try:
        merged, values, path = gather(args)
    except (config.ConfigError, ValueError, TypeError) as exc:
        return usage_error("serve", exc)
    if values.print_config:
        sys.stdout.write(config.render(values, path))
        return 0
    target = what_to_serve("serve", values, args.target)
    if isinstance(target, int):
        return target
    options = settings.producer_options(merged)
    options["access_log"] = bool(values.access_log or values.access_logfile)
    return run(target, options, functools.partial(workers_wanted, args))


def workers_wanted(args: argparse.Namespace) -> int | None:
    """On SIGHUP: ``workers`` as every source gives it now (the config file read again), or
    None to keep the count when none gives it or the settings cannot be read."""
    try:
        wanted = gather(args)[1].workers
        if wanted is not None and wanted < 1:
            raise ValueError("workers must be 1 or more, got %d" % wanted)
    except (config.ConfigError, ValueError, TypeError) as exc:
        log.error("SIGHUP: cannot read the settings again, keeping the number of workers: %s",
                  exc)
        return None
    return wanted  # type: ignore[no-any-return]


def run(target: str | Consumer, options: dict[str, Any],
        workers_on_reload: Callable[[], int | None] | None = None) -> int:
    try:
        producer = Producer(target, **options)
        producer.workers_on_reload = workers_on_reload
        producer.rename_process = True
        producer.start()
    except WorkerBootError as exc:
        log.error("cannot serve %s: %s", target, exc)
        return EXIT_BOOT
    except (RuntimeError, OSError) as exc:
        log.error("cannot serve %s: %s", target, exc)
        return 1
    return 0


def request(args: argparse.Namespace) -> int:
    timeout = args.timeout or None
    if timeout is not None and timeout < 0:
        return usage_error("request", "--timeout must be 0 (no limit) or more")
    try:
        if args.file is not None or args.message == "-":
            with (open(args.file, "rb") if args.file is not None else spooled_stdin()) as body:
                output = Output()
                client.request_file(args.url, body, timeout=timeout, reply_to=output)
                return output.finish()
        reply = client.request(args.url, os.fsencode(args.message), timeout=timeout)
    except ValueError as exc:
        return usage_error("request", exc)
    except BrokenPipeError:
        return Output.closed()
    except OSError as exc:              # a RequestFailed, or a file that cannot be read
        print("gaspar2 request: %s" % exc, file=sys.stderr)
        return 1
    return write_reply(reply)


class Output:
    """Standard output for a reply written as it arrives."""

    last = b"\n"

    def write(self, data: bytes) -> None:
        if data:
            sys.stdout.buffer.write(data)
            self.last = data[-1:]

    def finish(self) -> int:
        """0, after a newline for a terminal when the reply has none."""
        if sys.stdout.isatty() and self.last != b"\n":
            sys.stdout.buffer.write(b"\n")      # the shell's prompt starts on a line of its own
        sys.stdout.buffer.flush()
        return 0

    @staticmethod
    def closed() -> int:
        """The reader left (``| head``): nothing to say, and nothing left for the interpreter
        to flush at exit either; 141, as the shell reports a program stopped by SIGPIPE."""
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def spooled_stdin() -> BinaryIO:
    """Standard input as a regular file: itself when it is one (``< file``), else a copy in
    a temporary file (a pipe), since the length goes first and memory must stay small."""
    stdin = sys.stdin.buffer
    if stat.S_ISREG(os.fstat(stdin.fileno()).st_mode):
        return stdin
    spool = tempfile.TemporaryFile()    # noqa: SIM115  # the caller closes it
    shutil.copyfileobj(stdin, spool, 1 << 20)
    spool.seek(0)
    return spool


def write_reply(reply: bytes) -> int:
    output = Output()
    try:
        output.write(reply)
        return output.finish()
    except BrokenPipeError:
        return Output.closed()


def check(args: argparse.Namespace) -> int:
    """Deploy-time sanity check: what serve checks before it forks, then what every worker
    does before its first request, then (with --request) one request, all in this process."""
    logs.configure()
    try:
        code = resolve(args.target)
    except ValueError as exc:
        return usage_error("check", exc)
    if code:
        return code
    consumer = as_consumer(args.target)
    try:
        consumer.setup()
    except Exception as exc:
        log.error("cannot serve %s: setup() raised %s: %s", args.target, type(exc).__name__,
                  exc, exc_info=True)
        return EXIT_BOOT
    if args.request is None:
        print("gaspar2 check: %s imported and set up" % args.target)
        return 0
    try:
        reply = reply_bytes(consumer.handle(os.fsencode(args.request)))
    except Exception as exc:
        log.error("%s failed the request: %s: %s", args.target, type(exc).__name__, exc,
                  exc_info=True)
        return 1
    return write_reply(bytes(reply))


def worker(args: argparse.Namespace) -> int:
    values = settings.Settings(**{**settings.DEFAULTS, **vars(args)})
    if bool(args.curve_secret_key) != bool(args.curve_server_key):
        return usage_error("worker", "CURVE needs both --curve-secret-key and --curve-server-key")
    target = what_to_serve("worker", values, args.target)
    if isinstance(target, int):
        return target
    try:
        return serve_group(target, args.connect, args.workers, args.listen,
                           args.advertise, args.curve_secret_key, args.curve_server_key,
                           values.heartbeat, values.max_message_size)
    except KeyFileError as exc:
        log.error("cannot join %s: %s", args.connect, exc)
        return 1


def keys(args: argparse.Namespace) -> int:
    public, secret = generate_keys(args.directory, args.name)
    print("public key: %s\nsecret key: %s" % (public, secret))
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """argparse's parsing, except that a misspelt option is told by its own command, with
    the nearest one it has, as the config file does for a misspelt name."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        command: argparse.ArgumentParser = getattr(args, "parser", parser)
        known = [o for action in command._actions for o in action.option_strings]
        hint = "; ".join("%s: did you mean %s?" % (word, close[0]) for word in extras
                         if word.startswith("-") and (close := difflib.get_close_matches(
                             word.partition("=")[0], known, 1)))
        command.error("unrecognized arguments: %s%s" % (" ".join(extras),
                                                        " (%s)" % hint if hint else ""))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    commands = {"serve": serve, "check": check, "request": request, "worker": worker, "keys": keys}
    return commands[args.command](args)
