"""The remote worker protocol's conformance kit:
``python -m gaspar2.conformance [--curve] -- WORKER-COMMAND...``.

It judges a worker from outside, as a producer sees it: it starts a real producer (``python
-m gaspar2 serve``, a process of its own, so the kit needs nothing of the producer's code)
with a remote endpoint on loopback, runs the worker command, and prints one line per check.
See docs/reference/worker-protocol.rst for the checks and how the command is told where to
go. Exit status: 0 every check passed, 1 one failed, 2 the kit could not run.

``handle`` is the handler a worker under test runs (``gaspar2 worker
gaspar2.conformance:handle``); the producer's one local worker runs it too, and is kept busy
with ``occupy`` for the whole run, so that every request goes to the worker under test.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

import zmq

from . import client
from .protocol import curve, wire

PREFIX = b"gaspar2-conformance:"
EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT = 0, 1, 2
SERVING = re.compile(r"serving .* on (\S+):(\d+) with \d+ workers?")
JOINED = re.compile(r"remote worker \w+ \(remote pid \d+\) joined from (tcp://\S+)")
STATUS = re.compile(r"status: (.*)")


def handle(message: bytes) -> bytes:
    """Echo, except the kit's own requests: ``fail``, ``sleep:SECONDS``, and ``occupy:PATH``
    (for the producer's local worker: mark PATH, then hold on until the producer is gone)."""
    if not message.startswith(PREFIX):
        return message
    command, _, arg = message[len(PREFIX):].partition(b":")
    if command == b"fail":
        raise RuntimeError("failed on purpose, as the conformance kit asked")
    if command == b"sleep":
        time.sleep(float(arg))
    elif command == b"occupy":
        with open(arg, "w"):
            pass
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.1)
    return message


class CheckFailed(Exception):
    """A check's verdict, with what went wrong."""


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``condition`` until it is true, or fail the check after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise CheckFailed("no %s within %.1f s" % (what, timeout))
        time.sleep(0.02)


class Keys:
    """Key pairs for one CURVE run: the producer's, the worker's, and one nobody knows."""

    def __init__(self, directory: str):
        self.producer = curve.generate_keys(directory, "producer")
        self.authorized = os.path.join(directory, "authorized")
        self.worker = curve.generate_keys(self.authorized, "worker")
        self.rogue = curve.generate_keys(os.path.join(directory, "rogue"), "rogue")


class Producer:
    """``python -m gaspar2 serve`` with a remote endpoint, its log, and its local worker
    kept busy."""

    def __init__(self, work: str, remote_port: int, heartbeat: float, max_size: int,
                 keys: Keys | None, generation: int):
        self.log_path = os.path.join(work, "producer%d.log" % generation)
        self.mark = os.path.join(work, "occupied%d" % generation)
        cmd = [sys.executable, "-m", "gaspar2", "serve", "gaspar2.conformance:handle",
               "--port", "0", "--workers", "1", "--window", "1",
               "--remote-workers", "tcp://127.0.0.1:%d" % remote_port,
               "--heartbeat", str(heartbeat), "--max-message-size", str(max_size)]
        if keys is not None:
            cmd += ["--curve-secret-key", keys.producer[1], "--curve-authorized",
                    keys.authorized]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        match = wait_for(self._serving, 60, "serving producer")
        assert isinstance(match, re.Match)
        self.url = "%s:%s" % (match.group(1), match.group(2))
        threading.Thread(target=self._occupy, daemon=True).start()
        wait_for(lambda: os.path.exists(self.mark), 30, "busy local worker")

    def _serving(self) -> re.Match[str] | None:
        if self.proc.poll() is not None:
            raise CheckFailed("the producer exited with %s:\n%s" % (self.proc.returncode,
                                                                    self.log()))
        return SERVING.search(self.log())

    def _occupy(self) -> None:
        with contextlib.suppress(client.RequestFailed):
            client.request(self.url, PREFIX + b"occupy:" + self.mark.encode())

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def status(self) -> dict[str, int]:
        """The producer's counts (it logs them on SIGUSR2)."""
        before = self.log().count("status:")
        os.kill(self.proc.pid, signal.SIGUSR2)
        wait_for(lambda: self.log().count("status:") > before, 10, "status line")
        line = STATUS.findall(self.log())[-1]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", line)}

    def remote_workers(self) -> int:
        return self.status()["workers"] - 1

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class Worker:
    """One run of the worker command, in a session of its own."""

    def __init__(self, command: list[str], env: dict[str, str], log: IO[bytes]):
        self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.signal(signal.SIGKILL)     # what the command left behind in its session


class Kit:
    def __init__(self, command: list[str], use_curve: bool, heartbeat: float, max_size: int,
                 timeout: float, out: IO[str]):
        self.command = command
        self.heartbeat = heartbeat
        self.max_size = max_size
        self.timeout = timeout
        self.out = out
        self.work = tempfile.mkdtemp(prefix="gaspar2-conformance-")
        self.keys = Keys(os.path.join(self.work, "keys")) if use_curve else None
        self.worker_log = open(os.path.join(self.work, "worker.log"), "ab")  # noqa: SIM115
        self.port = free_port()
        self.generation = 0
        self.logs: list[str] = []           # the logs of producers that are gone
        self.producer: Producer | None = None
        self.workers: list[Worker] = []
        self.failed: list[str] = []

    # -- the parts ---------------------------------------------------------------------------

    def start_producer(self) -> Producer:
        self.generation += 1
        self.producer = Producer(self.work, self.port, self.heartbeat, self.max_size,
                                 self.keys, self.generation)
        return self.producer

    def stop_producer(self) -> None:
        if self.producer is not None:
            self.producer.kill()
            self.logs.append(self.producer.log())
            self.producer = None

    def environment(self, key: tuple[str, str] | None) -> tuple[dict[str, str], dict[str, str]]:
        """The placeholders and the environment a worker command is given."""
        values = {"connect": "tcp://127.0.0.1:%d" % self.port,
                  "heartbeat": str(self.heartbeat), "max_message_size": str(self.max_size)}
        env = dict(os.environ)
        if self.keys is not None and key is not None:
            values["secret_key_file"], values["server_key_file"] = key[1], self.keys.producer[0]
            public, secret = curve.load_secret(key[1])
            env["GASPAR2_PUBLIC_KEY"] = public.decode()
            env["GASPAR2_SECRET_KEY"] = secret.decode()
            env["GASPAR2_SERVER_KEY"] = curve.load_public_keys(self.keys.producer[0])[0].decode()
        env.update(("GASPAR2_" + name.upper(), value) for name, value in values.items())
        return values, env

    def start_worker(self, rogue: bool = False) -> Worker:
        key = None if self.keys is None else self.keys.rogue if rogue else self.keys.worker
        values, env = self.environment(key)
        try:
            command = [arg.format(**values) for arg in self.command]
        except (KeyError, IndexError, ValueError) as exc:
            raise CheckFailed("the command names a placeholder that is not given: %s"
                              % exc) from None
        worker = Worker(command, env, self.worker_log)
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: Worker) -> None:
        worker.stop()
        self.workers.remove(worker)

    def joined(self, count: int, timeout: float | None = None) -> None:
        assert self.producer is not None
        producer = self.producer
        for worker in self.workers:
            if worker.proc.poll() is not None:
                raise CheckFailed("the worker command exited with %s" % worker.proc.returncode)
        wait_for(lambda: producer.remote_workers() >= count,
                 timeout or 3 * self.heartbeat + 8, "%d joined worker(s)" % count)

    def request(self, payload: bytes) -> bytes:
        assert self.producer is not None
        return client.request(self.producer.url, payload, self.timeout)

    def echo(self, payload: bytes) -> None:
        try:
            reply = self.request(payload)
        except client.RequestFailed as exc:
            raise CheckFailed("a request of %d bytes failed: %r" % (len(payload), exc)) from None
        if reply != payload:
            raise CheckFailed("a request of %d bytes was answered with %d other bytes"
                              % (len(payload), len(reply)))

    def all_logs(self) -> str:
        return "".join(self.logs) + (self.producer.log() if self.producer is not None else "")

    def endpoint(self) -> str:
        assert self.producer is not None
        found = JOINED.findall(self.producer.log())
        if not found:
            raise CheckFailed("no joined worker in the producer's log")
        return str(found[-1])

    # -- the checks --------------------------------------------------------------------------

    def check(self, name: str, body: Callable[[], None]) -> None:
        """Run one check and print its line; after a failure, a fresh worker for the next."""
        try:
            body()
        except CheckFailed as exc:
            self.report(name, str(exc))
            self.recover()
        except (OSError, zmq.ZMQError) as exc:
            self.report(name, "%s: %s" % (type(exc).__name__, exc))
            self.recover()
        else:
            self.report(name, None)

    def report(self, name: str, failure: str | None) -> None:
        if failure is None:
            self.out.write("pass  %s\n" % name)
        else:
            self.failed.append(name)
            self.out.write("FAIL  %s: %s\n" % (name, failure))
        self.out.flush()

    def recover(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        self.start_worker()
        with contextlib.suppress(CheckFailed):
            self.joined(1)

    def joins(self) -> None:
        self.joined(1)
        self.echo(b"hello")

    def echo_check(self, size: int) -> Callable[[], None]:
        def check() -> None:
            self.joined(1)
            payload = os.urandom(size)
            if payload.startswith(PREFIX):      # as likely as a meteor; make sure anyway
                payload = b"\0" + payload[1:]
            self.echo(payload)
        return check

    def handler_error(self) -> None:
        self.joined(1)
        assert self.producer is not None
        before = self.producer.log().count("handler failed")
        try:
            reply = self.request(PREFIX + b"fail")
        except client.RequestTimeout:
            raise CheckFailed("no answer to a request whose handler failed") from None
        except client.RequestFailed:
            pass
        else:
            raise CheckFailed("a failed handler's request was answered with %d bytes"
                              % len(reply))
        producer = self.producer
        wait_for(lambda: producer.log().count("handler failed") > before, 5,
                 "'handler failed' line in the producer's log")
        self.echo(b"still serving")

    def malformed_batch(self) -> None:
        self.joined(1)
        endpoint = self.endpoint()
        ctx = zmq.Context()
        try:
            push = ctx.socket(zmq.PUSH)
            push.linger = 2000
            if self.keys is not None:
                public, secret = curve.load_secret(self.keys.producer[1])
                worker_key = curve.load_public_keys(self.keys.worker[0])[0]
                curve.make_client(push, (public, secret), worker_key)
            push.connect(endpoint)
            good = wire.encode_batch([], [])
            for frames in ([b"B"], [b""], [b"B" * 100], [good, good], [good[:-1]],
                           [good[:21] + b"\xff" * 12 + good[21:]],
                           [wire.BATCH_FIXED.pack(wire.BATCH, 0, 0, 2**32 - 1) * 2],
                           [os.urandom(5000)], [b"W", b"short"], [b"N"]):
                push.send_multipart(frames)
            push.close()            # lingers until they are sent
        finally:
            ctx.destroy(linger=2000)
        self.echo(b"served after garbage")

    def heartbeats(self) -> None:
        self.joined(1)
        assert self.producer is not None
        before = self.producer.log().count("missed %d heartbeats" % wire.MISSED_BEATS)
        until = time.monotonic() + (wire.MISSED_BEATS + 1) * self.heartbeat
        while time.monotonic() < until:
            time.sleep(0.05)
        if self.producer.log().count("missed %d heartbeats" % wire.MISSED_BEATS) > before:
            raise CheckFailed("counted gone while idle for %.1f s: no heartbeats"
                              % ((wire.MISSED_BEATS + 1) * self.heartbeat))
        self.echo(b"after a quiet while")

    def counted_gone(self) -> None:
        self.joined(1)
        assert self.producer is not None
        producer = self.producer
        before = producer.log().count("missed %d heartbeats" % wire.MISSED_BEATS)
        (worker,) = self.workers
        worker.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: producer.log().count("missed %d heartbeats" % wire.MISSED_BEATS)
                     > before, (wire.MISSED_BEATS + 2) * self.heartbeat + 2,
                     "'missed heartbeats' line for the stopped worker")
        finally:
            worker.signal(signal.SIGCONT)
        self.joined(1, (2 * wire.MISSED_BEATS + 2) * self.heartbeat + 8)
        self.echo(b"back again")

    def producer_restart(self) -> None:
        self.joined(1)
        self.stop_producer()
        self.start_producer()
        self.joined(1, (2 * wire.MISSED_BEATS + 2) * self.heartbeat + 8)
        self.echo(b"to the new producer")

    def sigkill(self) -> None:
        self.joined(1)
        (first,) = self.workers
        outcome: list[BaseException | bytes] = []

        def slow() -> None:
            try:
                outcome.append(client.request(self.producer.url if self.producer else "",
                                              PREFIX + b"sleep:60", 60))
            except Exception as exc:    # the verdict says what it was
                outcome.append(exc)
        thread = threading.Thread(target=slow, daemon=True)
        thread.start()
        producer = self.producer
        assert producer is not None
        wait_for(lambda: producer.status()["at_workers"] >= 2, 10, "slow request at the worker")
        self.start_worker()
        self.joined(2)
        first.signal(signal.SIGKILL)
        first.proc.wait()
        self.workers.remove(first)
        thread.join((wire.MISSED_BEATS + 2) * self.heartbeat + 5)
        if not outcome:
            raise CheckFailed("the killed worker's request was not failed")
        if not isinstance(outcome[0], client.RequestReset):
            raise CheckFailed("the killed worker's request ended with %r, not a reset"
                              % (outcome[0],))
        self.echo(b"the pool serves on")

    def unknown_key(self) -> None:
        self.joined(1)
        assert self.producer is not None
        producer = self.producer
        joined = producer.log().count("joined from")
        rogue = self.start_worker(rogue=True)
        try:
            wait_for(lambda: "unknown CURVE key" in producer.log(), 10,
                     "refusal of the unknown key")
            if producer.log().count("joined from") != joined:
                raise CheckFailed("a worker with an unknown key joined")
        finally:
            self.stop_worker(rogue)
        self.echo(b"after the rogue")

    def dropped(self, reason: str, what: str) -> Callable[[], None]:
        def check() -> None:
            lines = [line for line in self.all_logs().splitlines()
                     if "dropped a worker message (%s)" % reason in line]
            if lines:
                raise CheckFailed("the producer dropped %s: %s" % (what, lines[0][-200:]))
        return check

    def run(self) -> int:
        try:
            self.start_producer()
            self.start_worker()
            checks: list[tuple[str, Callable[[], None]]] = [
                ("joins", self.joins),
                ("echo 0 B", self.echo_check(0)),
                ("echo 100 B", self.echo_check(100)),
                ("echo 1 MiB", self.echo_check(2**20)),
                ("echo max (%d B)" % self.max_size, self.echo_check(self.max_size)),
                ("handler error", self.handler_error),
                ("malformed batch", self.malformed_batch),
                ("heartbeats", self.heartbeats),
                ("counted gone", self.counted_gone),
                ("producer restart", self.producer_restart),
                ("sigkill", self.sigkill),
            ]
            if self.keys is not None:
                checks.append(("unknown key", self.unknown_key))
            checks += [("only held", self.dropped("not_held", "an answer to a request the "
                                                  "worker did not hold")),
                       ("well-formed", self.dropped("malformed", "a malformed message"))]
            for name, body in checks:
                self.check(name, body)
        finally:
            for worker in list(self.workers):
                self.stop_worker(worker)
            self.stop_producer()
            self.worker_log.close()
        passed = len(checks) - len(self.failed)
        self.out.write("%d of %d checks passed; logs in %s\n" % (passed, len(checks), self.work))
        return EXIT_FAILED if self.failed else EXIT_PASSED


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m gaspar2.conformance",
        description="Check a remote worker against the worker protocol: "
                    "docs/reference/worker-protocol.rst.",
        epilog="exit status: 0 every check passed, 1 a check failed, 2 the kit could not run")
    parser.add_argument("--curve", action="store_true", help="join with CURVE keys")
    parser.add_argument("--heartbeat", type=float, default=0.3, metavar="S",
                        help="the producer's heartbeat (default 0.3)")
    parser.add_argument("--max-message-size", type=int, default=4 * 2**20, metavar="BYTES",
                        help="the producer's max_message_size (default 4 MiB)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="how long a request may take (default 10)")
    parser.add_argument("command", nargs="+", metavar="WORKER-COMMAND",
                        help="the worker command, after --")
    return parser.parse_args(argv)


@contextlib.contextmanager
def interrupted() -> Iterator[None]:
    """A TERM ends the run as an interrupt does, so that what it started is stopped."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return EXIT_CANNOT if exc.code else EXIT_PASSED
    kit = Kit(args.command, args.curve, args.heartbeat, args.max_message_size, args.timeout,
              sys.stdout)
    try:
        with interrupted():
            return kit.run()
    except (CheckFailed, OSError) as exc:
        sys.stdout.write("cannot run: %s\n" % exc)
        return EXIT_CANNOT
    except KeyboardInterrupt:
        return EXIT_CANNOT


if __name__ == "__main__":
    sys.exit(main())
