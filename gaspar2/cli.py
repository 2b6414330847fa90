"""The ``gaspar2`` command: serve a handler, or send one request."""

import argparse
import importlib.util
import logging
import traceback
import os
import sys

from . import client, framing, remote
from .consumer import as_consumer, split_spec
from .producer import Producer

log = logging.getLogger("gaspar2")
LOG_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def find_target(spec):
    """Check that MODULE of ``MODULE:ATTR`` can be found, without importing it: the
    workers import it, each afresh, so a reload (SIGHUP) picks up new code."""
    module_name, _ = split_spec(spec)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if importlib.util.find_spec(module_name) is None:
        raise ImportError("no module named %r" % module_name)


def add_log_level(parser):
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error", "critical"])


def build_parser():
    parser = argparse.ArgumentParser(prog="gaspar2", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a handler on every core")
    serve.add_argument("target", metavar="MODULE:ATTR",
                       help="a handler function, a Consumer subclass or a Consumer instance")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=10123, help="0 picks a free port")
    serve.add_argument("--workers", type=int, default=None, help="default: one per CPU")
    serve.add_argument("--max-message-size", type=int, default=framing.DEFAULT_MAX_MESSAGE_SIZE,
                       metavar="BYTES")
    serve.add_argument("--graceful-timeout", type=float, default=30.0, metavar="S",
                       help="on stop, how long to finish the requests received (default 30)")
    serve.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="fail a request not answered within S seconds (default: none)")
    serve.add_argument("--worker-timeout", type=float, default=None, metavar="S",
                       help="kill a worker busy on one request for S seconds (default: none)")
    serve.add_argument("--read-timeout", type=float, default=10.0, metavar="S",
                       help="drop a client that has not sent its frame in S seconds (default 10)")
    serve.add_argument("--max-connections", type=int, default=10000, metavar="N",
                       help="past N open connections, leave the rest in the listen queue")
    serve.add_argument("--backlog", type=int, default=2048, metavar="N",
                       help="listen queue length (default 2048)")
    serve.add_argument("--max-requests", type=int, default=None, metavar="N",
                       help="replace a worker after N requests (default: never)")
    serve.add_argument("--max-requests-jitter", type=int, default=0, metavar="N",
                       help="add 0..N to each worker's max-requests, so they do not all restart at once")
    serve.add_argument("--metrics", default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics there (needs the 'metrics' extra)")
    serve.add_argument("--access-log", action="store_true",
                       help="log one line per request (client, outcome, sizes, time, worker)")
    serve.add_argument("--remote-workers", default=None, metavar="tcp://HOST:PORT",
                       help="let workers on other machines join at this endpoint")
    serve.add_argument("--curve-secret-key", default=None, metavar="FILE",
                       help="this producer's .key_secret (from 'gaspar2 keys')")
    serve.add_argument("--curve-authorized", default=None, metavar="DIR|FILE",
                       help="the public .key files of the workers allowed to join")
    serve.add_argument("--insecure-remote-workers", action="store_true",
                       help="allow remote workers without CURVE on a non-loopback address")
    serve.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                       help="remote worker heartbeat; 3 missed ones mean it is gone (default 1)")
    add_log_level(serve)

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
    worker.add_argument("--heartbeat", type=float, default=1.0, metavar="S")
    add_log_level(worker)

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


def serve(args):
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        find_target(args.target)
    except (ImportError, ValueError) as exc:
        log.error("cannot load %s: %s", args.target, exc)
        return 2
    producer = Producer(args.target, args.port, args.workers, args.host,
                        max_message_size=args.max_message_size,
                        graceful_timeout=args.graceful_timeout, timeout=args.timeout,
                        worker_timeout=args.worker_timeout, read_timeout=args.read_timeout,
                        max_connections=args.max_connections, backlog=args.backlog,
                        max_requests=args.max_requests,
                        max_requests_jitter=args.max_requests_jitter,
                        metrics=args.metrics, access_log=args.access_log,
                        remote_workers=args.remote_workers,
                        curve_secret_key=args.curve_secret_key,
                        curve_authorized=args.curve_authorized,
                        insecure_remote=args.insecure_remote_workers, heartbeat=args.heartbeat)
    try:
        producer.start()
    except RuntimeError as exc:
        log.error("cannot serve %s: %s", args.target, exc)
        return 1
    except OSError as exc:
        log.error("cannot serve %s on %s:%s: %s", args.target, args.host, args.port, exc)
        return 1
    return 0


def request(args):
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


def check(args):
    """Deploy-time sanity check: what every worker does before its first request."""
    try:
        as_consumer(args.target).setup()
    except Exception:
        traceback.print_exc()
        print("gaspar2 check: %s failed" % args.target, file=sys.stderr)
        return 1
    print("gaspar2 check: %s imported and set up" % args.target)
    return 0


def worker(args):
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    try:
        find_target(args.target)
    except (ImportError, ValueError) as exc:
        log.error("cannot load %s: %s", args.target, exc)
        return 2
    if bool(args.curve_secret_key) != bool(args.curve_server_key):
        log.error("CURVE needs both --curve-secret-key and --curve-server-key")
        return 2
    return remote.serve_group(args.target, args.connect, args.workers, args.listen,
                              args.advertise, args.curve_secret_key, args.curve_server_key,
                              args.heartbeat)


def keys(args):
    public, secret = remote.generate_keys(args.directory, args.name)
    print("public key: %s\nsecret key: %s" % (public, secret))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    commands = {"serve": serve, "check": check, "request": request, "worker": worker, "keys": keys}
    return commands[args.command](args)
