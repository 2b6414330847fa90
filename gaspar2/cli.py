"""The ``gaspar2`` command: serve a handler, run remote workers, or send one request."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import traceback
from typing import Any

from . import client, settings
from .consumer import as_consumer, split_spec
from .curve import generate_keys
from .producer import Producer
from .workergroup import serve_group

log = logging.getLogger("gaspar2")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def find_target(spec: str) -> None:
    """Check that MODULE of ``MODULE:ATTR`` can be found, without importing it: the
    workers import it, each afresh, so a reload (SIGHUP) picks up new code."""
    module_name, _ = split_spec(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec(module_name) is None:
        raise ImportError("no module named %r" % module_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gaspar2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a handler on every core")
    serve.add_argument("target", metavar="MODULE:ATTR",
                       help="a handler function, a Consumer subclass or a Consumer instance")
    settings.add_arguments(serve)

    worker = commands.add_parser("worker", help="run workers for a producer on another machine")
    worker.add_argument("target", metavar="MODULE:ATTR")
    worker.add_argument("--connect", required=True, metavar="tcp://HOST:PORT",
                        help="the producer's --remote-workers endpoint")
    worker.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    worker.add_argument("--listen", default="0.0.0.0", metavar="HOST",
                        help="the address the workers listen on for requests")
    worker.add_argument("--advertise", default=None, metavar="HOST",
                        help="the address the producer reaches them at (default: the route to it)")
    worker.add_argument("--curve-secret-key", default=None, metavar="FILE",
                        help="these workers' .key_secret")
    worker.add_argument("--curve-server-key", default=None, metavar="FILE",
                        help="the producer's public .key")
    settings.add_arguments(worker, ("heartbeat", "log_level"))

    keys = commands.add_parser("keys", help="generate a CURVE key pair")
    keys.add_argument("directory")
    keys.add_argument("name", help="writes NAME.key (public) and NAME.key_secret")

    check = commands.add_parser("check", help="import a handler and run its setup(), then exit")
    check.add_argument("target", metavar="MODULE:ATTR")

    req = commands.add_parser("request", help="send one request and print the reply")
    req.add_argument("url", metavar="HOST:PORT")
    req.add_argument("message", nargs="?", default="-", help="default or '-': read stdin")
    req.add_argument("--timeout", type=float, default=None, metavar="S")
    return parser


def resolved(args: argparse.Namespace) -> dict[str, Any]:
    """The defaults overlaid with the flags given."""
    return {**settings.DEFAULTS, **vars(args)}


def prepare(args: argparse.Namespace) -> dict[str, Any] | None:
    """Resolve the settings, start logging and find the target; None if it cannot be found."""
    values = resolved(args)
    logging.basicConfig(level=values["log_level"].upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        find_target(args.target)
    except (ImportError, ValueError) as exc:
        log.error("cannot load %s: %s", args.target, exc)
        return None
    return values


def serve(args: argparse.Namespace) -> int:
    values = prepare(args)
    if values is None:
        return 2
    producer = Producer(args.target, **settings.producer_options(values))
    try:
        producer.start()
    except (RuntimeError, OSError) as exc:
        log.error("cannot serve %s: %s", args.target, exc)
        return 1
    return 0


def request(args: argparse.Namespace) -> int:
    if args.message == "-":
        message = sys.stdin.buffer.read()
    else:
        message = os.fsencode(args.message)
    try:
        reply = client.request(args.url, message, timeout=args.timeout)
    except (client.RequestFailed, ValueError) as exc:
        print("gaspar2 request: %s" % exc, file=sys.stderr)
        return 1
    sys.stdout.buffer.write(reply)
    sys.stdout.buffer.flush()
    return 0


def check(args: argparse.Namespace) -> int:
    """Deploy-time sanity check: what every worker does before its first request."""
    try:
        as_consumer(args.target).setup()
    except Exception:
        traceback.print_exc()
        print("gaspar2 check: %s failed" % args.target, file=sys.stderr)
        return 1
    print("gaspar2 check: %s imported and set up" % args.target)
    return 0


def worker(args: argparse.Namespace) -> int:
    values = prepare(args)
    if values is None:
        return 2
    if bool(args.curve_secret_key) != bool(args.curve_server_key):
        log.error("CURVE needs both --curve-secret-key and --curve-server-key")
        return 2
    return serve_group(args.target, args.connect, args.workers, args.listen, args.advertise,
                       args.curve_secret_key, args.curve_server_key, values["heartbeat"])


def keys(args: argparse.Namespace) -> int:
    public, secret = generate_keys(args.directory, args.name)
    print("public key: %s\nsecret key: %s" % (public, secret))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"serve": serve, "check": check, "request": request, "worker": worker, "keys": keys}
    return commands[args.command](args)
